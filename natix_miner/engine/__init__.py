"""The cascade engine: tiers, uncertainty routing, consensus, batching, placement, breakers, cache.

Usage::

    from natix_miner.engine import Engine
    engine = Engine.from_profile("configs/demo-cpu.yaml")
    await engine.start()
    result = await engine.predict(jpeg_bytes)        # PredictResult
    result.probability, result.tiers_run, result.fallback
    await engine.close()
"""

from natix_miner.engine.engine import Engine  # noqa: F401
from natix_miner.engine.result import PredictResult  # noqa: F401
