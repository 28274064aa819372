"""The validator side, for local testing: the reward exactly as validators compute it, and the mock
validator that queries miners on loopback with the live challenge pipeline.

Usage::

    from natix_miner.validator.reward import Scorer
    scorer = Scorer()
    s = scorer.score(uid=0, hotkey="5F...", prediction=0.83, label=1)
    s.reward, s.mcc_100, s.accuracy_10, scorer.ema[0]

The mock validator: ``python scripts/mock_validator.py --spawn-miner --n 200`` (see
``docs/mock-validator.md`` and :mod:`natix_miner.validator.mock`).
"""
