"""``/readyz``: "this miner can answer well now", as a list of named checks.

``/healthz`` is liveness only (the process runs). Readiness fails when answers would be the
fallback or worse than the profile promises:

* ``engine``: the engine has loaded and serves (at least one expert loaded);
* ``tier0``: every expert of the first tier loaded (one that failed to load meant every answer was
  0.49 while ``/readyz`` said ready);
* ``breakers``: no first-tier expert has every replica's breaker open;
* ``decode``: the decode threads are not all stuck (``natix_miner.engine.decodepool``);
* ``admission``: the engine's slots and its waiting queue are not both full (validators would be
  shed);
* ``axon``: the axon serves and its socket accepts;
* ``connections``: the axon's connection governor (``natix_miner.miner.limits``) can still take a
  validator's new connection: not every slot is open and busy with a request (a newcomer would be
  refused ``full``);
* ``tiers``: every tier has a loaded expert (``status: degraded`` names the empty tiers; a miner
  only serves so with ``--allow-degraded``).

Each check is a function ``(ctx) -> {"ok": bool, ...details}``; adding one is one line in
:data:`CHECKS`. A check that raises reports ``{"ok": false, "error": ...}``; it never breaks the
endpoint.

Usage::

    from natix_miner.ops.readiness import evaluate
    ok, body = evaluate(miner, extra={"vault": vault_probe})   # body: {"ready": ok, "checks": {...}}
"""

import typing

_LOADED = ("loaded", "degraded")  # "degraded": serving with fewer replicas than asked


class Context:
    """What the checks look at, read once per evaluation."""

    def __init__(self, miner: typing.Any):
        self.miner = miner
        self.engine = getattr(miner, "engine", None) if miner is not None else None
        try:
            self.status: dict = self.engine.status() if self.engine is not None else {}
        except Exception as exc:  # noqa: BLE001 - reported by the engine check
            self.status = {"error": f"{type(exc).__name__}: {exc}"}
        self.experts: typing.Dict[str, dict] = self.status.get("experts") or {}
        profile = getattr(self.engine, "profile", None) or getattr(miner, "profile", None)
        self.tier0: typing.List[str] = list(profile.tiers[0].experts) if profile is not None else []


def engine_loaded(ctx: Context) -> dict:
    loaded = sorted(n for n, e in ctx.experts.items() if e.get("load") in _LOADED)
    failed = sorted(n for n, e in ctx.experts.items() if e.get("load") == "failed")
    open_ = sorted(n for n, e in ctx.experts.items() if e.get("breaker") == "open")
    out = {"ok": bool(ctx.status.get("ready")) and bool(loaded), "loaded": loaded, "failed": failed,
           "breakers_open": open_, "profile": ctx.status.get("profile")}
    if ctx.miner is None:
        out["detail"] = "starting"
    elif "error" in ctx.status:
        out["error"] = ctx.status["error"]
    return out


def tier0_loaded(ctx: Context) -> dict:
    missing = sorted(n for n in ctx.tier0 if (ctx.experts.get(n) or {}).get("load") not in _LOADED)
    return {"ok": bool(ctx.tier0) and not missing, "experts": ctx.tier0, "missing": missing}


def tier0_breakers(ctx: Context) -> dict:
    open_ = sorted(n for n in ctx.tier0 if (ctx.experts.get(n) or {}).get("load") in _LOADED
                   and ctx.experts[n].get("breaker") == "open")
    every = sorted(n for n, e in ctx.experts.items() if e.get("breaker") == "open" and e.get("load") in _LOADED)
    return {"ok": not open_, "tier0_open": open_, "open": every}


def decode_pool(ctx: Context) -> dict:
    dec = ctx.status.get("decode")
    if dec is None:
        return {"ok": ctx.engine is not None, "detail": "no decode pool"}
    return {k: dec[k] for k in ("ok", "threads", "busy", "stuck", "abandoned", "replaced") if k in dec}


def admission(ctx: Context) -> dict:
    gate = getattr(ctx.miner, "admission", None)
    if gate is None:
        return {"ok": False, "detail": "starting"}
    snap = gate.snapshot()
    full = snap["inflight"] >= snap["max_inflight"] and snap["waiting"] >= snap["max_waiting"]
    return {"ok": not full, "inflight": snap["inflight"], "waiting": snap["waiting"],
            "max_inflight": snap["max_inflight"], "max_waiting": snap["max_waiting"], "refused": snap["refused"]}


def axon_serving(ctx: Context) -> dict:
    m = ctx.miner
    serving = bool(getattr(m, "serving", False))
    listening = bool(m.listening()) if m is not None and hasattr(m, "listening") else serving
    return {"ok": serving and listening, "listening": listening,
            "port": getattr(m, "port", 0) if m is not None else 0}


def connection_room(ctx: Context) -> dict:
    gov = getattr(ctx.miner, "governor", None)
    if gov is None:
        return {"ok": True, "detail": "no governor (axon not built yet)"}
    snap = gov.snapshot()
    idle = snap["idle_untrusted"] + snap["idle_trusted"]
    full = snap["open"] >= gov.max_connections and idle == 0
    return {"ok": not full, "open": snap["open"], "idle": idle, "max_connections": gov.max_connections,
            "shed": snap["shed"]}


def tiers_served(ctx: Context) -> dict:
    empty = ctx.status.get("empty_tiers") or {}
    return {"ok": not empty, "status": "degraded" if empty else "ok", "empty_tiers": empty,
            "allowed": bool(getattr(getattr(ctx.miner, "cfg", None), "allow_degraded", False))}


Check = typing.Callable[[Context], dict]
CHECKS: typing.List[typing.Tuple[str, Check]] = [
    ("engine", engine_loaded),
    ("tier0", tier0_loaded),
    ("breakers", tier0_breakers),
    ("decode", decode_pool),
    ("admission", admission),
    ("axon", axon_serving),
    ("connections", connection_room),
    ("tiers", tiers_served),
]


def evaluate(miner: typing.Any, extra: typing.Optional[typing.Mapping[str, typing.Callable[[], dict]]] = None,
             checks: typing.Optional[typing.Sequence[typing.Tuple[str, Check]]] = None
             ) -> typing.Tuple[bool, dict]:
    """Run every check (``checks``, default :data:`CHECKS`, plus ``extra`` zero-argument probes
    such as Vault's); returns ``(ready, {"ready": ..., "checks": {name: {...}}, "failing": [...]})``."""
    ctx = Context(miner)
    results: typing.Dict[str, dict] = {}
    for name, fn in list(checks if checks is not None else CHECKS):
        results[name] = _run(fn, ctx)
    for name, probe in (extra or {}).items():
        results[name] = _run(lambda _ctx, p=probe: p(), ctx)
    failing = [n for n, r in results.items() if not r.get("ok")]
    body: typing.Dict[str, typing.Any] = {"ready": not failing, "checks": results, "failing": failing}
    wallet = getattr(miner, "wallet", None) if miner is not None else None
    if wallet is not None:
        body["hotkey"] = wallet.hotkey.ss58_address
    return not failing, body


def _run(fn: typing.Callable[[Context], dict], ctx: Context) -> dict:
    try:
        out = dict(fn(ctx))
        out["ok"] = bool(out.get("ok"))
        return out
    except Exception as exc:  # noqa: BLE001 - one broken check must not break /readyz
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
