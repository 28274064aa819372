"""Weighted log-odds pooling of the experts that answered.

    z = bias + sum_i w_i * logit(p_i)        (the sum divided by sum_i |w_i| when ``normalize``)
    p = sigmoid(z / temperature)

Only experts that answered and did not abstain take part; a missing expert contributes nothing
(as if it had said 0.5). With no fitted weights every weight is 1 and ``normalize`` is on: the
geometric mean of the odds. The training pipeline fits weights and bias by logistic regression on
the experts' logits and writes them beside the profile in ``<profile>.consensus.json``
(``normalize: false``); it may also fit one rule per exit point in ``stages`` (tier name -> rule),
used when the cascade stops after that tier, since the experts present differ there.

The rule itself (with escalation and the final clamp) lives in :mod:`natix_miner.engine.policy`;
this class is its per-stage view for code that pools outside a cascade (calibration, hard-example
mining, the cascade benchmark).

Usage::

    from natix_miner.engine.consensus import Consensus
    c = Consensus(profile.consensus)
    c.combine({"a": Evidence(0.9), "b": Evidence(0.6)})          # -> 0.786 (geometric mean of odds)
    c.combine(evidence, stage="fast")                            # the rule fitted for tier "fast"
"""

import typing

import numpy as np

from natix_miner.config import ConsensusSpec, ConsensusStage
from natix_miner.engine.policy import evidence_logit, logit, pool, sigmoid, stage_rule  # noqa: F401
from natix_miner.experts.base import Evidence


class Consensus:
    """One profile's pooling rules; the arithmetic is :func:`natix_miner.engine.policy.pool`."""

    def __init__(self, spec: typing.Optional[ConsensusSpec] = None):
        self.spec = spec or ConsensusSpec()

    def rule(self, stage: typing.Optional[str] = None) -> ConsensusStage:
        return stage_rule(self.spec, stage)

    def weight(self, name: str, stage: typing.Optional[str] = None) -> float:
        return float(self.rule(stage).weights.get(name, 1.0))

    def combine(self, evidence: typing.Mapping[str, Evidence],
                stage: typing.Optional[str] = None) -> typing.Optional[float]:
        """Pool non-abstaining evidence; ``None`` when nobody gave an opinion."""
        names = list(evidence)
        p = pool(self.rule(stage), names, [[evidence_logit(evidence[n]) for n in names]])[0]
        return None if np.isnan(p) else float(p)
