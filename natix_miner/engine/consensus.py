"""Weighted log-odds pooling of the experts that answered.

    z = bias + sum_i w_i * logit(p_i)        (divided by sum_i w_i when ``normalize``)
    p = sigmoid(z / temperature)

With no fitted weights every weight is 1 and ``normalize`` is on: the geometric mean of the
odds. ``natix-miner calibrate`` fits weights and bias by logistic regression on the experts'
logits and writes them beside the profile (``normalize: false`` then).

Usage::

    from natix_miner.engine.consensus import Consensus
    c = Consensus(profile.consensus)
    c.combine({"a": Evidence(0.9), "b": Evidence(0.6)})   # -> 0.78...
"""

import math
import typing

from natix_miner.config import ConsensusSpec
from natix_miner.experts.base import Evidence


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Consensus:
    def __init__(self, spec: typing.Optional[ConsensusSpec] = None):
        self.spec = spec or ConsensusSpec()

    def weight(self, name: str) -> float:
        return float(self.spec.weights.get(name, 1.0))

    def combine(self, evidence: typing.Mapping[str, Evidence]) -> typing.Optional[float]:
        """Pool non-abstaining evidence; ``None`` when nobody gave an opinion."""
        num = 0.0
        den = 0.0
        for name, ev in evidence.items():
            if ev.abstain:
                continue
            w = self.weight(name)
            if w == 0.0:
                continue
            num += w * ev.logit
            den += abs(w)
        if den == 0.0:
            return None
        z = num / den if self.spec.normalize else num
        z = (z + self.spec.bias) / self.spec.temperature
        return sigmoid(z)
