"""The ops side of a running miner: metrics, health/readiness server and tracing behind one hook.

``natix-miner run`` calls :func:`build_hooks` before the miner starts, so ``/healthz`` answers
while models load (``/readyz`` says 503 until the engine is loaded and the axon serves).

Usage::

    from natix_miner.ops.runtime import build_hooks
    hooks = build_hooks(cfg)            # starts the HTTP server on cfg.metrics.port (0: a free port)
    miner = Miner(cfg, hooks=hooks)     # hooks.started(miner) binds the state gauges
    hooks.url                           # http://127.0.0.1:<port>

Every hook method swallows its own errors: observability never breaks an answer.
"""

import logging
import os
import threading
import time
import typing

from natix_miner import __version__
from natix_miner.config import MinerConfig
from natix_miner.miner.hooks import MinerHooks

log = logging.getLogger("natix_miner.ops")

VAULT_PROBE_TTL_S = 10.0


class _VaultProbe:
    """Cached ``sys/health`` of the configured Vault (one HTTP call per ``ttl_s`` at most)."""

    def __init__(self, vault_cfg, ttl_s: float = VAULT_PROBE_TTL_S):
        self.cfg, self.ttl_s = vault_cfg, ttl_s
        self._at, self._last = 0.0, {"ok": False, "detail": "not checked yet"}
        self._lock = threading.Lock()

    def __call__(self) -> dict:
        from natix_miner.ops.secrets import vault_health

        with self._lock:
            if time.monotonic() - self._at >= self.ttl_s:
                self._last = vault_health(self.cfg, timeout_s=min(2.0, self.cfg.timeout_s))
                self._at = time.monotonic()
            return dict(self._last)


class OpsHooks(MinerHooks):
    def __init__(self, cfg: MinerConfig, tracer=None):
        from natix_miner.ops.metrics import MinerMetrics

        self.cfg = cfg
        self.miner = None
        self.started_at = time.time()
        self.metrics = MinerMetrics()
        self.vault_probe = _VaultProbe(cfg.vault) if cfg.vault.enabled else None
        self.metrics.vault_probe = self.vault_probe
        self.tracer = tracer
        if self.tracer is None and cfg.tracing.endpoint:
            from natix_miner.ops.tracing import CascadeTracer

            self.tracer = CascadeTracer(cfg.tracing)
        self.server = None
        self._errors = 0

    # -- server ------------------------------------------------------------------------------
    def start_server(self) -> "OpsHooks":
        if self.cfg.metrics.enabled and self.server is None:
            from natix_miner.miner.errors import PortInUse
            from natix_miner.ops.health import OpsServer

            host, port = self.cfg.metrics.host, self.cfg.metrics.port
            try:
                self.server = OpsServer(host, port, render=self.metrics.render, health=self.health,
                                        ready=self.readiness).start()
            except OSError as exc:
                raise PortInUse("metrics", host, port, "--metrics.port", "NATIX_METRICS_PORT",
                                exc.strerror or str(exc)) from None
        return self

    @property
    def port(self) -> int:
        return self.server.port if self.server else 0

    @property
    def url(self) -> str:
        return self.server.url if self.server else ""

    # -- health ------------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 3), "miner_started": self.miner is not None}

    def readiness(self) -> typing.Tuple[bool, dict]:
        """``/readyz``: the named checks of :mod:`natix_miner.ops.readiness` (add one there), plus
        Vault's health when Vault is configured."""
        from natix_miner.ops.readiness import evaluate

        extra = {"vault": self.vault_probe} if self.vault_probe is not None else None
        group = getattr(self.miner, "readiness", None)  # a MinerGroup: the engine once, every hotkey's axon
        return group(extra) if callable(group) else evaluate(self.miner, extra=extra)

    # -- hooks -------------------------------------------------------------------------------
    def _guard(self, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - never let observability break serving
            self._errors += 1
            if self._errors <= 5 or self._errors % 1000 == 0:
                log.warning("ops hook failed (%d so far): %s: %s", self._errors, type(exc).__name__, exc)

    def started(self, miner) -> None:
        self._guard(self._started, miner)

    def _info(self, miner, name: str = "") -> dict:
        return {"hotkey": miner.wallet.hotkey.ss58_address, "name": name, "profile": getattr(miner.profile, "name", ""),
                "version": __version__, "mode": "local" if self.cfg.local else "chain"}

    def _started(self, miner) -> None:
        self.miner = miner  # a Miner, or a MinerGroup (its hotkeys registered through for_hotkey)
        self.metrics.bind(miner, None if hasattr(miner, "miners") else self._info(miner))
        if self.tracer is not None:
            self.tracer.set_profile(miner.profile)

    def _axon_hotkey(self) -> str:
        wallet = getattr(self.miner, "wallet", None)
        return wallet.hotkey.ss58_address if wallet is not None else ""

    def request(self, route, outcome, seconds, result=None, hotkey=None, axon: typing.Optional[str] = None) -> None:
        axon = self._axon_hotkey() if axon is None else axon
        self._guard(self.metrics.observe_request, route, outcome, seconds, result, hotkey=axon)
        if self.tracer is not None:
            self._guard(self.tracer.record, route, outcome, seconds, result, hotkey)

    def blacklisted(self, route, reason, hotkey=None, axon: typing.Optional[str] = None) -> None:
        self._guard(self.metrics.observe_blacklisted, route, reason, hotkey=self._axon_hotkey() if axon is None else axon)

    def status(self, status) -> None:
        self._guard(self.metrics.observe_status, status, hotkey=status.get("hotkey") or self._axon_hotkey())

    def for_hotkey(self, name: str) -> MinerHooks:
        """The hooks of one hotkey of a ``MinerGroup`` (``--hotkeys``): its series carry its ``hotkey`` label;
        the server, tracer and engine state stay this object's (bound to the group at its start)."""
        return _HotkeyView(self, name)

    def stopped(self) -> None:
        if self.tracer is not None:
            self._guard(self.tracer.shutdown)
        if self.server is not None:
            self._guard(self.server.stop)
            self.server = None


class _HotkeyView(MinerHooks):
    """:meth:`OpsHooks.for_hotkey`: one hotkey's requests and refusals, labelled with its ss58 address once
    its miner has started (its status line carries its hotkey); stopping is the group's (one server for all)."""

    def __init__(self, owner: OpsHooks, name: str):
        self.owner, self.name, self.hotkey = owner, name, ""

    def started(self, miner) -> None:
        self.hotkey = miner.wallet.hotkey.ss58_address
        self.owner._guard(self.owner.metrics.add_hotkey, self.hotkey, self.owner._info(miner, self.name))

    def request(self, route, outcome, seconds, result=None, hotkey=None) -> None:
        self.owner.request(route, outcome, seconds, result=result, hotkey=hotkey, axon=self.hotkey)

    def blacklisted(self, route, reason, hotkey=None) -> None:
        self.owner.blacklisted(route, reason, hotkey=hotkey, axon=self.hotkey)

    def status(self, status) -> None:
        self.owner.status(status)  # the status carries its hotkey


def build_hooks(cfg: MinerConfig) -> OpsHooks:
    """Metrics + health server (started now) + tracing (when an endpoint is configured)."""
    return OpsHooks(cfg).start_server()
