"""The engine boundary: what the miner layer may call, as a :class:`typing.Protocol`.

The miner (``natix_miner/miner/``), the health checks and the start-up checks depend only on
:class:`EngineClient`; :class:`natix_miner.engine.Engine` (the in-process cascade) implements it, and
so can anything else that answers images (a Ray Serve handle, a remote engine, a test stub). This
module imports nothing heavy: no torch, no numpy, no engine; :func:`local_engine` imports the
in-process engine only when it is called.

Usage::

    from natix_miner.engine.client import EngineClient, local_engine
    engine: EngineClient = local_engine(profile)          # natix_miner.engine.Engine(profile)
    await engine.start()
    res = await engine.predict(b64_text_or_bytes, deadline=time.monotonic() + 8)
    res.probability, res.fallback, res.tiers_run           # PredictResult
    engine.ready, engine.status(), engine.degraded_report()
    await engine.close()

Writing another client (the miner accepts it through ``Miner(cfg, engine=...)`` or
``Miner(cfg, engine_factory=...)``)::

    class MyClient:                                        # no base class needed
        profile: Profile
        ready = False
        async def start(self): ...
        async def predict(self, image, deadline=None, all_tiers=False) -> PredictResult: ...
        def status(self) -> dict: ...                      # keys: docs/engine.md (engine.status())
        def degraded_report(self) -> list: return []
        async def close(self): ...
    assert isinstance(MyClient(), EngineClient)            # runtime_checkable: the members exist
"""

import typing

if typing.TYPE_CHECKING:  # pragma: no cover
    from natix_miner.config import Profile
    from natix_miner.engine.result import PredictResult


class EngineUnavailable(RuntimeError):
    """An engine that cannot serve at :meth:`EngineClient.start` for a reason outside the profile (a
    remote engine not reachable); the message names the fix and the miner prints it as is (exit 7)."""


@typing.runtime_checkable
class EngineClient(typing.Protocol):
    """What the miner layer needs from an engine.

    * ``profile``: the cascade it serves (the miner reads ``name``, ``demo``, ``deadline_s``,
      ``fallback_probability``, ``tiers``).
    * ``ready``: true once :meth:`start` finished and it answers from its models.
    * :meth:`predict`: never raises for bad input or broken models; always a finite probability in
      [0, 1] (``fallback`` set when it could not answer from its models), within ``deadline``
      (``time.monotonic()`` seconds).
    """

    profile: "Profile"
    ready: bool

    async def start(self) -> None:
        """Load the models; after it returns, ``ready`` is true. Raises on a profile error."""
        ...

    async def predict(self, image: typing.Union[bytes, str], deadline: typing.Optional[float] = None,
                      all_tiers: bool = False) -> "PredictResult":
        """One image (encoded bytes, or base64 text as a synapse carries it) -> :class:`PredictResult`."""
        ...

    def status(self) -> dict:
        """A JSON-ready snapshot for ``/readyz`` and metrics: ``ready``, ``profile``, ``experts``
        (name -> ``{"load": ..., "breaker": ...}``), ``decode``, ... (docs/engine.md)."""
        ...

    def degraded_report(self) -> typing.List[str]:
        """One line per tier with no loadable expert (empty: not degraded)."""
        ...

    async def close(self) -> None:
        """Stop answering and free the models; idempotent."""
        ...


EngineFactory = typing.Callable[["Profile"], EngineClient]


def local_engine(profile: "Profile") -> EngineClient:
    """The in-process cascade :class:`natix_miner.engine.engine.Engine` for ``profile`` (imported here,
    not at module import: the miner layer stays free of the engine's dependencies until it serves)."""
    from natix_miner.engine.engine import Engine

    return Engine(profile)


def engine_factory_for(cfg: typing.Any) -> EngineFactory:
    """The factory a miner's config asks for: :func:`local_engine`, or with ``--engine.ray ADDRESS``
    (``cfg.engine.ray``) a :class:`natix_miner.engine.ray_client.RayEngineClient` on the Ray Serve app
    ``cfg.engine.app`` (no model loads in this process; docs/scaling.md)."""
    eng = getattr(cfg, "engine", None)
    if eng is None or not eng.ray:
        return local_engine

    def ray_engine(profile: "Profile") -> EngineClient:
        from natix_miner.engine.ray_client import RayEngineClient

        return RayEngineClient(profile, eng.ray, eng.app, connect_timeout_s=eng.connect_timeout_s,
                               stale_after_s=eng.stale_after_s)

    return ray_engine
