"""Weighted log-odds pooling of the experts that answered.

    z = bias + sum_i w_i * logit(p_i)        (the sum divided by sum_i |w_i| when ``normalize``)
    p = sigmoid(z / temperature)

Only experts that answered and did not abstain take part; a missing expert contributes nothing
(as if it had said 0.5). With no fitted weights every weight is 1 and ``normalize`` is on: the
geometric mean of the odds. The training pipeline fits weights and bias by logistic regression on
the experts' logits and writes them beside the profile in ``<profile>.consensus.json``
(``normalize: false``); it may also fit one rule per exit point in ``stages`` (tier name -> rule),
used when the cascade stops after that tier, since the experts present differ there.

Usage::

    from natix_miner.engine.consensus import Consensus
    c = Consensus(profile.consensus)
    c.combine({"a": Evidence(0.9), "b": Evidence(0.6)})          # -> 0.786 (geometric mean of odds)
    c.combine(evidence, stage="fast")                            # the rule fitted for tier "fast"
"""

import bisect
import math
import typing

from natix_miner.config import ConsensusSpec, ConsensusStage
from natix_miner.experts.base import Evidence


def isotonic(z: float, xs: typing.Sequence[float], ys: typing.Sequence[float]) -> float:
    """Piecewise-linear interpolation through the knots, clamped at both ends (like ``np.interp``)."""
    if z <= xs[0]:
        return float(ys[0])
    if z >= xs[-1]:
        return float(ys[-1])
    i = bisect.bisect_right(xs, z)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(y0 if x1 == x0 else y0 + (y1 - y0) * (z - x0) / (x1 - x0))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Consensus:
    def __init__(self, spec: typing.Optional[ConsensusSpec] = None):
        self.spec = spec or ConsensusSpec()

    def rule(self, stage: typing.Optional[str] = None) -> ConsensusStage:
        if stage is not None and stage in self.spec.stages:
            return self.spec.stages[stage]
        return self.spec

    def weight(self, name: str, stage: typing.Optional[str] = None) -> float:
        return float(self.rule(stage).weights.get(name, 1.0))

    def combine(self, evidence: typing.Mapping[str, Evidence],
                stage: typing.Optional[str] = None) -> typing.Optional[float]:
        """Pool non-abstaining evidence; ``None`` when nobody gave an opinion."""
        rule = self.rule(stage)
        num = 0.0
        den = 0.0
        for name, ev in evidence.items():
            if ev.abstain:
                continue
            w = float(rule.weights.get(name, 1.0))
            if w == 0.0:
                continue
            num += w * ev.logit
            den += abs(w)
        if den == 0.0:
            return None
        z = num / den if rule.normalize else num
        if rule.isotonic is not None:
            return isotonic(z, rule.isotonic.x, rule.isotonic.y)
        z = (z + rule.bias) / rule.temperature
        return sigmoid(z)
