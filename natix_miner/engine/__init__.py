"""The cascade engine: tiers, uncertainty routing, consensus, batching, placement, breakers, cache.

Usage::

    from natix_miner.engine import Engine
    engine = Engine.from_profile("configs/demo-cpu.yaml")
    await engine.start()
    result = await engine.predict(jpeg_bytes)        # PredictResult
    result.probability, result.tiers_run, result.fallback
    await engine.close()

``Engine`` and ``PredictResult`` are imported on first use, so ``natix_miner.engine.client`` (the
:class:`~natix_miner.engine.client.EngineClient` protocol the miner layer depends on) and
``natix_miner.engine.result`` import without the engine's dependencies.
"""

import importlib
import typing

_LAZY = {"Engine": "natix_miner.engine.engine", "PredictResult": "natix_miner.engine.result",
         "EngineClient": "natix_miner.engine.client"}

if typing.TYPE_CHECKING:  # pragma: no cover
    from natix_miner.engine.client import EngineClient  # noqa: F401
    from natix_miner.engine.engine import Engine  # noqa: F401
    from natix_miner.engine.result import PredictResult  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natix_miner.engine' has no attribute {name!r}")


__all__ = sorted(_LAZY)
