"""What :meth:`Engine.predict` returns: the answer and how it was reached."""

import dataclasses
import math
import typing

from natix_miner.experts.base import Evidence


def safe_probability(p: typing.Any, fallback: float = 0.49) -> float:
    """Clamp to [0, 1], replace NaN/inf/garbage with ``fallback``, never exactly 0.5.

    The validator rounds with ``numpy.round`` (0.5 -> 0) and breaks on NaN or values beyond
    [-0.5, 1.5); so the wire value is always a finite float in [0, 1].
    """
    try:
        p = float(p)
    except (TypeError, ValueError):
        p = fallback
    if not math.isfinite(p):
        p = fallback
    p = min(1.0, max(0.0, p))
    if p == 0.5:
        p = 0.4999
    return p


@dataclasses.dataclass
class PredictResult:
    probability: float
    tiers_run: typing.List[str] = dataclasses.field(default_factory=list)
    evidence: typing.Dict[str, Evidence] = dataclasses.field(default_factory=dict)
    timings: typing.Dict[str, float] = dataclasses.field(default_factory=dict)  # seconds
    fallback: bool = False
    fallback_reason: typing.Optional[str] = None
    cached: bool = False
    skipped: typing.Dict[str, str] = dataclasses.field(default_factory=dict)  # expert -> why
    image_sha256: typing.Optional[str] = None

    @property
    def escalated(self) -> bool:
        return len(self.tiers_run) > 1

    def to_dict(self) -> dict:
        return {
            "probability": self.probability,
            "tiers_run": list(self.tiers_run),
            "evidence": {k: {"probability": v.probability, "abstain": v.abstain, "detail": v.detail}
                         for k, v in self.evidence.items()},
            "timings_ms": {k: round(v * 1000, 3) for k, v in self.timings.items()},
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
            "cached": self.cached,
            "skipped": dict(self.skipped),
        }
