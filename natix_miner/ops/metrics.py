"""Prometheus metrics of the miner: what it answered, how fast, through which tiers, in what state.

Counted per request (from the miner's hooks and the engine's ``PredictResult``):

=============================================  ===================================================
``natix_requests_total{route,outcome,hotkey}`` answered | fallback | shed | error | blacklisted
``natix_request_duration_seconds{route}``      end to end inside the miner (histogram)
``natix_tier_duration_seconds{tier}``          per tier that ran (histogram)
``natix_expert_duration_seconds{expert}``      per expert call (histogram)
``natix_decode_duration_seconds``              image decode (histogram)
``natix_cascade_requests_total{escalated}``    requests that ran the cascade; escalated = >1 tier
``natix_final_tier_total{tier}``               the tier whose consensus was answered
``natix_cache_lookups_total{result}``          hit | miss (per request)
``natix_fallbacks_total{reason}``              why the fallback value was answered
``natix_expert_skipped_total{expert,reason}``  breaker_open, timeout, error, not loaded, ...
``natix_blacklisted_total{route,reason}``      refused callers
``natix_prediction``                           answered probabilities (histogram, 0..1)
``natix_last_request_timestamp_seconds``       last answered request (start time before any)
=============================================  ===================================================

Set at every resync (the miner's status line, from the metagraph), each with a ``hotkey`` label (the
axon's ss58 address: one series per hotkey when one process serves several, ``--hotkeys``):
``natix_miner_uid`` (-1 when not registered), ``natix_miner_stake``, ``natix_miner_trust``,
``natix_miner_incentive``, ``natix_miner_emission``, ``natix_validators_seen`` (hotkeys with a
validator permit) and ``natix_answers_last_window`` (requests answered since the previous status line).

Read at scrape time (from ``miner.engine.status()`` and the process): ``natix_engine_ready``,
``natix_axon_serving{hotkey}``, ``natix_expert_load_status{expert,status}``, ``natix_expert_loaded{expert}``,
``natix_breaker_state{expert}`` (0 closed, 1 half-open, 2 open), ``natix_expert_queue_depth{expert}``,
``natix_engine_degraded`` (1: a tier has no loaded expert), ``natix_tier_experts_loaded{tier}``,
``natix_cache_entries``, ``natix_cache_hit_ratio``, ``natix_gpu_memory_bytes{device,kind}``,
``natix_admission_inflight`` / ``_waiting`` / ``natix_admission_refused_total{reason}`` (overload shedding),
``natix_vault_up`` (when Vault is configured), ``natix_miner_info{hotkey,name,...}`` (one row per
hotkey), ``natix_cache_shared_hits_total{hotkey}`` (with ``--hotkeys``: answers of this hotkey computed
for another hotkey of the process, an identical image sent to both), and the standard ``process_*`` metrics.

Usage::

    m = MinerMetrics()
    m.bind(miner)                                   # scrape-time state (a Miner or a MinerGroup)
    m.add_hotkey("5F...", {"name": "hk1", ...})      # its series start at 0 (uid -1)
    m.observe_request("ImageSynapse", "answered", 0.012, result, hotkey="5F...")
    body, content_type = m.render()
"""

import re
import time
import typing

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ROUTES = ("ImageSynapse", "ExtendedImageSynapse")
OUTCOMES = ("answered", "fallback", "shed", "error", "blacklisted")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 12.0)
PROB_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 10)) + (1.0,)
BREAKER_CODE = {"closed": 0, "half_open": 1, "open": 2}
LOAD_STATES = ("pending", "loaded", "failed")
# status-line key -> (gauge, help): set at every resync from the metagraph
STATUS_GAUGES = (
    ("uid", "natix_miner_uid", "this hotkey's UID on the subnet (-1: not registered)"),
    ("stake", "natix_miner_stake", "this hotkey's stake (TAO/alpha, as the metagraph's S)"),
    ("trust", "natix_miner_trust", "this hotkey's trust (metagraph T)"),
    ("incentive", "natix_miner_incentive", "this hotkey's incentive (metagraph I)"),
    ("emission", "natix_miner_emission", "this hotkey's emission (metagraph E)"),
    ("validators", "natix_validators_seen", "hotkeys with a validator permit in the last metagraph"),
    ("answers", "natix_answers_last_window", "requests answered between the last two status lines"),
)


def _route(route: str) -> str:
    return route if route in ROUTES else "other"


def _reason(text: typing.Optional[str]) -> str:
    """Bounded label values: the reason's stem (``bad_image:too_large`` -> ``bad_image``)."""
    if not text:
        return "unknown"
    stem = re.split(r"[:\s(]", str(text).strip(), maxsplit=1)[0].lower()
    stem = re.sub(r"[^a-z0-9_]+", "_", stem).strip("_")
    return stem[:40] or "unknown"


def _blacklist_reason(text: str) -> str:
    t = (text or "").lower()
    for key, label in (("stake", "low_stake"), ("permit", "no_validator_permit"), ("unregistered", "unregistered"),
                       ("not registered", "unregistered"), ("missing", "missing_hotkey"), ("local", "local_mode")):
        if key in t:
            return label
    return _reason(t)


INFO_LABELS = ("hotkey", "name", "profile", "version", "mode")


def _axons(miner) -> typing.Dict[str, typing.Any]:
    """hotkey (ss58) -> miner: every hotkey of a ``MinerGroup`` (a dropped one reads not serving), or the one miner."""
    axons = getattr(miner, "axons", None)
    if isinstance(axons, dict):
        return axons
    many = getattr(miner, "miners", None)
    miners = list(many.values()) if isinstance(many, dict) else ([miner] if miner is not None else [])
    out = {}
    for m in miners:
        wallet = getattr(m, "wallet", None)
        out[wallet.hotkey.ss58_address if wallet is not None else ""] = m
    return out


_GPU_KINDS = ("allocated", "reserved", "used", "free", "total", "placed", "budget")


def _gpu_rows(status: dict) -> typing.Dict[str, typing.Dict[str, float]]:
    """device -> {kind: bytes}: the engine's ``status()["devices"]`` (placement + live memory), topped
    up by :func:`natix_miner.ops.gpu.gpu_memory` (NVML ``used``; works without engine support)."""
    from natix_miner.ops.gpu import gpu_memory

    rows: typing.Dict[str, typing.Dict[str, float]] = {}
    for dev, d in (status.get("devices") or {}).items():
        if not str(dev).startswith("cuda") or not isinstance(d, dict):
            continue
        for kind in _GPU_KINDS:
            v = d.get(f"{kind}_bytes")
            if isinstance(v, (int, float)):
                rows.setdefault(str(dev), {})[kind] = float(v)
    for d in gpu_memory():
        row = rows.setdefault(d["device"], {})
        for kind in _GPU_KINDS:
            if kind in d and kind not in row:
                row[kind] = float(d[kind])
    return rows


class _StateCollector:
    """Scrape-time gauges from the bound miner; never raises."""

    def __init__(self, owner: "MinerMetrics"):
        self.owner = owner

    def describe(self):
        return []

    def collect(self):
        o = self.owner
        miner = o.miner
        engine = getattr(miner, "engine", None)
        ready = GaugeMetricFamily("natix_engine_ready", "1 when the engine has loaded and serves")
        serving = GaugeMetricFamily("natix_axon_serving", "1 when the hotkey's axon is serving", labels=["hotkey"])
        status: dict = {}
        try:
            status = engine.status() if engine is not None else {}
        except Exception:  # noqa: BLE001
            status = {}
        ready.add_metric([], 1.0 if status.get("ready") else 0.0)
        for hotkey, m in _axons(miner).items():
            serving.add_metric([hotkey], 1.0 if getattr(m, "serving", False) else 0.0)
        yield ready
        yield serving
        load = GaugeMetricFamily("natix_expert_load_status", "1 for the expert's load status", labels=["expert", "status"])
        loaded = GaugeMetricFamily("natix_expert_loaded", "1 when the expert's model is loaded", labels=["expert"])
        breaker = GaugeMetricFamily("natix_breaker_state", "circuit breaker: 0 closed, 1 half-open, 2 open",
                                    labels=["expert"])
        queue = GaugeMetricFamily("natix_expert_queue_depth", "images waiting in the expert's batcher",
                                  labels=["expert"])
        for name, e in (status.get("experts") or {}).items():
            st = str(e.get("load") or "pending")
            for s in sorted(set(LOAD_STATES) | {st}):
                load.add_metric([name, s], 1.0 if s == st else 0.0)
            loaded.add_metric([name], 1.0 if st == "loaded" else 0.0)
            breaker.add_metric([name], float(BREAKER_CODE.get(str(e.get("breaker")), 2)))
            if isinstance(e.get("queue"), (int, float)):
                queue.add_metric([name], float(e["queue"]))
        yield load
        yield loaded
        yield breaker
        yield queue
        empty = status.get("empty_tiers") or {}
        degraded = GaugeMetricFamily("natix_engine_degraded", "1 when a tier has no loaded expert "
                                     "(served only with --allow-degraded)")
        degraded.add_metric([], 1.0 if empty else 0.0)
        yield degraded
        tiers = GaugeMetricFamily("natix_tier_experts_loaded", "experts of the tier that loaded", labels=["tier"])
        profile = getattr(engine, "profile", None)
        for tier in getattr(profile, "tiers", None) or []:
            n = sum(1 for name in tier.experts
                    if str(((status.get("experts") or {}).get(name) or {}).get("load")) in ("loaded", "degraded"))
            tiers.add_metric([tier.name], float(n))
        yield tiers
        cache = status.get("cache") or {}
        entries = GaugeMetricFamily("natix_cache_entries", "results held in the engine's cache")
        entries.add_metric([], float(cache.get("entries", 0) or 0))
        ratio = GaugeMetricFamily("natix_cache_hit_ratio", "engine cache hits / lookups since start")
        ratio.add_metric([], float(cache.get("hit_rate", 0.0) or 0.0))
        yield entries
        yield ratio
        adm: dict = {}
        try:
            adm = miner.admission.snapshot() if getattr(miner, "admission", None) is not None else {}
        except Exception:  # noqa: BLE001
            adm = {}
        if adm:
            for key in ("inflight", "waiting"):
                g = GaugeMetricFamily(f"natix_admission_{key}", f"requests {key} in the miner's admission control")
                g.add_metric([], float(adm.get(key, 0) or 0))
                yield g
            refused = CounterMetricFamily("natix_admission_refused", "requests shed by admission control",
                                          labels=["reason"])
            for reason, n in (adm.get("refused") or {}).items():
                refused.add_metric([_reason(reason)], float(n))
            yield refused
        engine_requests = CounterMetricFamily("natix_engine_predict", "predict() calls seen by the engine")
        engine_requests.add_metric([], float(status.get("requests", 0) or 0))
        yield engine_requests
        gpu = GaugeMetricFamily("natix_gpu_memory_bytes", "GPU memory by device and kind (allocated/reserved: "
                                "this process's torch allocator; used/free/total: the card; placed/budget: "
                                "the engine's placement)", labels=["device", "kind"])
        for dev, kinds in _gpu_rows(status).items():
            for kind, value in sorted(kinds.items()):
                gpu.add_metric([dev, kind], float(value))
        yield gpu
        if o.vault_probe is not None:
            up = GaugeMetricFamily("natix_vault_up", "1 when Vault answers its health check unsealed")
            up.add_metric([], 1.0 if o.vault_probe().get("ok") else 0.0)
            yield up
        info = GaugeMetricFamily("natix_miner_info", "static facts about this miner (one row per hotkey)",
                                 labels=list(INFO_LABELS))
        for row in o.infos.values():
            info.add_metric([row.get(k, "") for k in INFO_LABELS], 1.0)
        yield info
        shared = getattr(miner, "shared_hits", None)
        if shared is not None:
            hits = CounterMetricFamily("natix_cache_shared_hits", "answers of this hotkey computed for another "
                                       "hotkey of the process (an identical image sent to both)", labels=["hotkey"])
            for hotkey, n in shared.items():
                hits.add_metric([hotkey], float(n))
            yield hits


class MinerMetrics:
    """All metrics in one private registry (several miners per process never collide)."""

    def __init__(self, registry: typing.Optional[CollectorRegistry] = None, process: bool = True):
        r = self.registry = registry or CollectorRegistry()
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.miner = None
        self.infos: typing.Dict[str, typing.Dict[str, str]] = {}  # hotkey -> natix_miner_info labels
        self.vault_probe: typing.Optional[typing.Callable[[], dict]] = None
        self.requests = Counter("natix_requests", "requests by route, outcome and the axon's hotkey",
                                ["route", "outcome", "hotkey"], registry=r)
        self.latency = Histogram("natix_request_duration_seconds", "end-to-end time inside the miner",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.tier_latency = Histogram("natix_tier_duration_seconds", "time per tier that ran", ["tier"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.expert_latency = Histogram("natix_expert_duration_seconds", "time per expert call", ["expert"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.decode_latency = Histogram("natix_decode_duration_seconds", "image decode time",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.cascade = Counter("natix_cascade_requests", "requests that ran the cascade", ["escalated"], registry=r)
        self.final_tier = Counter("natix_final_tier", "the tier whose consensus was answered", ["tier"], registry=r)
        self.cache = Counter("natix_cache_lookups", "result cache lookups per request", ["result"], registry=r)
        self.fallbacks = Counter("natix_fallbacks", "fallback answers by reason", ["reason"], registry=r)
        self.skipped = Counter("natix_expert_skipped", "experts left out of a request", ["expert", "reason"],
                               registry=r)
        self.blacklisted = Counter("natix_blacklisted", "refused callers", ["route", "reason"], registry=r)
        self.prediction = Histogram("natix_prediction", "answered probabilities", buckets=PROB_BUCKETS, registry=r)
        self.last_request = Gauge("natix_last_request_timestamp_seconds",
                                  "unix time of the last answered request (process start before any)", registry=r)
        self.last_request.set(time.time())
        self.chain = {key: Gauge(name, text, ["hotkey"], registry=r) for key, name, text in STATUS_GAUGES}
        for route in ROUTES:
            self.latency.labels(route)
        for v in ("true", "false"):
            self.cascade.labels(v)
        for v in ("hit", "miss"):
            self.cache.labels(v)
        r.register(_StateCollector(self))

    def bind(self, miner, info: typing.Optional[typing.Dict[str, str]] = None) -> None:
        """Read scrape-time state from ``miner`` (``.engine.status()``, ``.serving``)."""
        self.miner = miner
        if info:
            self.add_hotkey(info.get("hotkey", ""), info)
        status = {}
        try:
            status = miner.engine.status()
        except Exception:  # noqa: BLE001
            pass
        for name in (status.get("experts") or {}):
            self.expert_latency.labels(name)

    def add_hotkey(self, hotkey: str, info: typing.Optional[typing.Dict[str, str]] = None) -> None:
        """A hotkey this process serves: its request counters start at 0, its UID at -1, its info row."""
        for route in ROUTES:
            for outcome in OUTCOMES:
                self.requests.labels(route, outcome, hotkey)
        self.chain["uid"].labels(hotkey).set(-1)
        if info:
            self.infos[hotkey] = {k: str(v) for k, v in info.items()}

    def observe_request(self, route: str, outcome: str, seconds: float, result=None, hotkey: str = "") -> None:
        """One answer of the axon whose hotkey is ``hotkey`` (ss58)."""
        route = _route(route)
        self.requests.labels(route, outcome if outcome in OUTCOMES else "error", hotkey or "").inc()
        self.latency.labels(route).observe(max(0.0, float(seconds)))
        if outcome in ("answered", "fallback", "shed"):
            self.last_request.set(time.time())
        if result is None:
            if outcome in ("error", "shed"):
                self.fallbacks.labels("exception" if outcome == "error" else "shed").inc()
            return
        try:
            self.prediction.observe(float(result.probability))
        except (TypeError, ValueError):
            pass
        if getattr(result, "fallback", False):
            self.fallbacks.labels(_reason(result.fallback_reason)).inc()
        if getattr(result, "cached", False):
            self.cache.labels("hit").inc()
            return
        if getattr(result, "image_sha256", None):  # decoded, looked up, missed
            self.cache.labels("miss").inc()
        timings = getattr(result, "timings", None) or {}
        for key, value in timings.items():
            kind, _, name = key.partition(":")
            if kind == "tier" and name:
                self.tier_latency.labels(name).observe(value)
            elif kind == "expert" and name:
                self.expert_latency.labels(name).observe(value)
            elif key == "decode":
                self.decode_latency.observe(value)
        tiers = list(getattr(result, "tiers_run", None) or [])
        if tiers:
            self.cascade.labels("true" if len(tiers) > 1 else "false").inc()
            self.final_tier.labels(tiers[-1]).inc()
        for expert, why in (getattr(result, "skipped", None) or {}).items():
            self.skipped.labels(expert, _reason(why)).inc()

    def observe_status(self, status: typing.Mapping[str, typing.Any], hotkey: str = "") -> None:
        """The status line (``Miner.status()``) of the axon whose hotkey is ``hotkey`` as gauges."""
        for key, gauge in self.chain.items():
            if isinstance(status.get(key), (int, float)):
                gauge.labels(hotkey or "").set(float(status[key]))

    def observe_blacklisted(self, route: str, reason: str, hotkey: str = "") -> None:
        route = _route(route)
        self.requests.labels(route, "blacklisted", hotkey or "").inc()
        self.blacklisted.labels(route, _blacklist_reason(reason)).inc()

    def render(self) -> typing.Tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
