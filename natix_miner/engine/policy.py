"""The cascade's decision rule, written once: pooling, stage rules, escalation, the final clamp.

Pure: numbers in, numbers out (numpy; no torch, no asyncio, no I/O). Every path that turns
experts' answers into P(roadwork) goes through it: the online engine (``Engine._cascade``, one
image, tier by tier under deadlines), the bulk path (``engine/bulk.py``, whole batches on the
card, escalating the images still in the band) and the training replay
(``training/runner.py`` ``replay_cascade``, precomputed evidence). What differs between them is
only how evidence is gathered; the rule below is the same function, applied to one row or many.

The rule, after each tier that ran (at least one of its experts was asked):

1. **Pool** everything seen so far with the tier's consensus rule (``consensus.stages[tier]``,
   else the profile-level rule): ``z = sum_i w_i * logit_i`` over experts with an opinion and a
   non-zero weight (divided by ``sum_i |w_i|`` when ``normalize``), then ``isotonic(z)`` when
   fitted, else ``sigmoid((z + bias) / temperature)``. Nobody with an opinion: no new value, the
   previous one stands.
2. **Escalate** while there is no value yet, or ``low < p < high`` (the tier's ``escalation``
   band, else the profile's).
3. **Answer**: the last value, or ``fallback_probability`` when there is none, through
   :func:`natix_miner.engine.result.safe_probability` ([0, 1], never NaN, never exactly 0.5).

A logit is what an expert's :class:`Evidence` says (``Evidence.logit``: its probability clamped to
``[EPS, 1 - EPS]``); ``NaN`` means no opinion (abstained, failed, not asked).

Usage::

    from natix_miner.engine.policy import CascadePolicy
    policy = CascadePolicy(profile)
    # one image, tier by tier (the online engine)
    p = None
    for i, tier in enumerate(profile.tiers):
        evidence.update(ask(tier))                       # {name: Evidence}
        p, climb = policy.after_tier(i, evidence, p)
        if not climb:
            break
    answer = policy.answer(p)                            # float in [0, 1], never 0.5
    # many images (bulk, replay): tier_logits(i, rows) -> {name: (len(rows),) logits} for the
    # rows still climbing; {} when the tier cannot run
    out = policy.cascade(n, tier_logits)
    out.probabilities, out.depth, out.tiers_run(3)
"""

import dataclasses
import math
import typing

import numpy as np

from natix_miner.config import ConsensusSpec, ConsensusStage, EscalationSpec, Profile
from natix_miner.engine.result import safe_probability
from natix_miner.experts.base import Evidence

# the logits an Evidence can carry: its probability is clamped to [EPS, 1 - EPS] first
LOGIT_MIN = Evidence(0.0).logit
LOGIT_MAX = Evidence(1.0).logit

TierLogits = typing.Callable[[int, np.ndarray], typing.Mapping[str, typing.Any]]


def sigmoid(z):
    """``1 / (1 + exp(-z))`` without overflow; a float for a float, an array for an array."""
    a = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(a))
    out = np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return float(out) if out.ndim == 0 else out


def logit(p):
    """``log(p / (1 - p))``; a float for a float, an array for an array."""
    a = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.log(a / (1.0 - a))
    return float(out) if out.ndim == 0 else out


def evidence_logit(ev: typing.Optional[Evidence]) -> float:
    """What one answer adds to the pool: its logit, or NaN for no opinion (abstained or ``None``)."""
    return math.nan if ev is None or ev.abstain else ev.logit


def clamp_logits(z) -> np.ndarray:
    """Raw model logits as an Evidence would carry them (float64, clamped; NaN stays no opinion)."""
    return np.clip(np.asarray(z, dtype=np.float64), LOGIT_MIN, LOGIT_MAX)


def stage_rule(spec: ConsensusSpec, stage: typing.Optional[str] = None) -> ConsensusStage:
    """The pooling rule fitted for tier ``stage``, else the profile-level one."""
    if stage is not None and stage in spec.stages:
        return spec.stages[stage]
    return spec


def pooled_logit(weights: typing.Mapping[str, float], normalize: bool, names: typing.Sequence[str],
                 Z) -> np.ndarray:
    """The pooled log-odds before bias, temperature or isotonic map: ``sum_i w_i * z_i`` over the
    columns of ``Z`` ((n, len(names)) logits, NaN = no opinion) with an opinion and a non-zero
    weight (an expert not in ``weights`` weighs 1), divided by ``sum_i |w_i|`` when ``normalize``;
    (n,), NaN where nobody took part.

    Terms are added in column order, one column at a time, so one row gives bit for bit what
    the same row gives inside a batch."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] != len(names):
        raise ValueError(f"logits of shape {Z.shape} for {len(names)} experts (want (n, {len(names)}))")
    num = np.zeros(Z.shape[0])
    den = np.zeros(Z.shape[0])
    for j, name in enumerate(names):
        w = float(weights.get(name, 1.0))
        if w == 0.0:
            continue
        z = Z[:, j]
        has = ~np.isnan(z)
        num += np.where(has, w * z, 0.0)
        den += np.where(has, abs(w), 0.0)
    none = den == 0.0
    z = num / np.where(none, 1.0, den) if normalize else num
    return np.where(none, np.nan, z)


def pool(rule: ConsensusStage, names: typing.Sequence[str], Z) -> np.ndarray:
    """Weighted log-odds pooling of ``Z`` ((n, len(names)) logits, NaN = no opinion) with ``rule``:
    (n,) probabilities, NaN where nobody with a non-zero weight had an opinion."""
    z = pooled_logit(rule.weights, rule.normalize, names, Z)
    none = np.isnan(z)
    z = np.where(none, 0.0, z)
    if rule.isotonic is not None:
        p = np.interp(z, rule.isotonic.x, rule.isotonic.y)
    else:
        p = sigmoid((z + rule.bias) / rule.temperature)
    return np.where(none, np.nan, p)


def in_band(p, band: EscalationSpec):
    """``low < p < high`` (False for NaN); a bool for a float, an array for an array."""
    a = np.asarray(p, dtype=np.float64)
    out = (band.low < a) & (a < band.high)
    return bool(out) if out.ndim == 0 else out


@dataclasses.dataclass
class Outcome:
    """What :meth:`CascadePolicy.cascade` decided for ``n`` images."""

    probabilities: np.ndarray  # (n,) float64 answers: safe, fallback where nothing was pooled
    pooled: np.ndarray  # (n,) the last pooled value, NaN where nothing was (a fallback answer)
    ran: np.ndarray  # (n, tiers) bool: tier j ran for image i
    tier_names: typing.List[str]

    @property
    def depth(self) -> np.ndarray:
        """(n,) index of the last tier run, plus one (0: no tier ran)."""
        last = np.where(self.ran.any(1), self.ran.shape[1] - np.argmax(self.ran[:, ::-1], axis=1), 0)
        return last.astype(np.int64)

    def tiers_run(self, i: int) -> typing.List[str]:
        """Names of the tiers that ran for image ``i``, in order (``PredictResult.tiers_run``)."""
        return [t for t, r in zip(self.tier_names, self.ran[i]) if r]


class CascadePolicy:
    """A profile's tiers, bands and consensus (``consensus`` overrides the profile's, e.g. a rule
    being fitted) as one decision rule. Holds nothing else; safe to share between threads."""

    def __init__(self, profile: Profile, consensus: typing.Optional[ConsensusSpec] = None):
        self.consensus = consensus if consensus is not None else profile.consensus
        self.tier_names = [t.name for t in profile.tiers]
        self.bands = [t.escalation or profile.escalation for t in profile.tiers]
        self.rules = [stage_rule(self.consensus, t.name) for t in profile.tiers]
        self.fallback = float(profile.fallback_probability)

    # -- the rule ----------------------------------------------------------------------------
    def step(self, tier: int, names: typing.Sequence[str], Z, previous) -> typing.Tuple[np.ndarray, np.ndarray]:
        """After tier ``tier`` ran: pool ``Z`` (everything seen so far, NaN = no opinion) with
        the tier's rule, keep ``previous`` (NaN = none yet) where nothing pooled, and say which
        rows climb on. Returns (p, climb), both (n,)."""
        pooled = pool(self.rules[tier], names, Z)
        p = np.where(np.isnan(pooled), np.asarray(previous, dtype=np.float64), pooled)
        return p, np.isnan(p) | in_band(p, self.bands[tier])

    def answer(self, p: typing.Optional[float]) -> float:
        """The wire value for a pooled ``p`` (None or NaN: nothing pooled, the fallback)."""
        if p is None or (isinstance(p, float) and math.isnan(p)):
            p = self.fallback
        return safe_probability(p, self.fallback)

    # -- one image (the online engine) --------------------------------------------------------
    def after_tier(self, tier: int, evidence: typing.Mapping[str, Evidence],
                   previous: typing.Optional[float]) -> typing.Tuple[typing.Optional[float], bool]:
        """:meth:`step` for one image: ``evidence`` is every answer so far (name -> Evidence, in
        the order they were gathered), ``previous`` the value after the last tier (None: none).
        Returns (p or None, climb)."""
        names = list(evidence)
        row = [[evidence_logit(evidence[n]) for n in names]]
        p, climb = self.step(tier, names, row, [math.nan if previous is None else previous])
        return (None if math.isnan(p[0]) else float(p[0])), bool(climb[0])

    # -- many images (bulk, replay) -----------------------------------------------------------
    def cascade(self, n: int, tier_logits: TierLogits, tiers: typing.Optional[int] = None) -> Outcome:
        """Run the first ``tiers`` tiers (default all) over ``n`` images at once.

        ``tier_logits(i, rows)``: for tier ``i`` and the indices of the images still climbing, the
        tier's experts' logits ({name: (len(rows),) array}, NaN = no opinion), or an empty mapping
        when the tier cannot run (no expert available; the online engine skips it the same way).
        ``tiers``: stop after that many (as the online engine does when the later ones are skipped)."""
        count = len(self.tier_names) if tiers is None else min(int(tiers), len(self.tier_names))
        p = np.full(n, np.nan)
        ran = np.zeros((n, len(self.tier_names)), dtype=bool)
        seen: typing.Dict[str, np.ndarray] = {}
        rows = np.arange(n)
        for i in range(count):
            if rows.size == 0:
                break
            cols = tier_logits(i, rows)
            if not cols:
                continue
            for name, z in cols.items():
                seen.setdefault(name, np.full(n, np.nan))[rows] = clamp_logits(z).reshape(-1)
            ran[rows, i] = True
            names = list(seen)
            Z = np.stack([seen[name][rows] for name in names], axis=1)
            p[rows], climb = self.step(i, names, Z, p[rows])
            rows = rows[climb]
        probs = np.array([self.answer(float(x)) for x in p], dtype=np.float64)
        return Outcome(probabilities=probs, pooled=p, ran=ran, tier_names=list(self.tier_names))
