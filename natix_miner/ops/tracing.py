"""Per-request traces of the cascade (OpenTelemetry), exported over OTLP/HTTP.

Off unless ``--tracing.endpoint`` (or ``OTEL_EXPORTER_OTLP_ENDPOINT``) is set; when off nothing
here is imported. The endpoint is a collector base URL (``http://phoenix:6006``,
``http://otel-collector:4318``); ``/v1/traces`` is appended unless already there.

One trace per answered request, built after the answer from ``PredictResult`` so the request
path pays only for span objects (export is batched on a background thread)::

    miner.request  route, outcome, probability, cached, fallback, tiers_run, caller hotkey
    └─ engine.predict
       ├─ decode
       ├─ tier:<fast>                 (tiers in the order they ran, back to back)
       │  ├─ expert:<a>               probability, abstain; all experts of a tier start together
       │  └─ expert:<b>
       └─ tier:<detectors> ...
    events: expert.skipped (expert, reason)

Span start times inside the engine are reconstructed from the durations in
``PredictResult.timings`` (the engine measures durations, not timestamps).

Usage::

    tracer = CascadeTracer(cfg.tracing)
    tracer.record("ImageSynapse", "answered", seconds, result, hotkey)
    tracer.shutdown()
"""

import time
import typing
from urllib.parse import urlparse

from natix_miner import __version__
from natix_miner.config import TracingConfig


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces`` (a full ``.../v1/traces`` is kept)."""
    u = urlparse(endpoint)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise ValueError(f"tracing endpoint must be an http(s) URL, got {endpoint!r}")
    path = u.path.rstrip("/")
    if not path.endswith("/v1/traces"):
        path = path + "/v1/traces"
    return u._replace(path=path).geturl()


class CascadeTracer:
    def __init__(self, cfg: TracingConfig, exporter=None, schedule_delay_ms: int = 2000):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=traces_url(cfg.endpoint), timeout=5)
        self.endpoint = cfg.endpoint
        self.provider = TracerProvider(resource=Resource.create({
            "service.name": cfg.service_name, "service.version": __version__}), shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms))
        self.tracer = self.provider.get_tracer("natix_miner", __version__)

    def record(self, route: str, outcome: str, seconds: float, result=None, hotkey: typing.Optional[str] = None,
               end_ns: typing.Optional[int] = None) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        end = end_ns or time.time_ns()
        start = end - int(max(0.0, seconds) * 1e9)
        attrs: typing.Dict[str, typing.Any] = {"natix.route": route, "natix.outcome": outcome}
        if hotkey:
            attrs["natix.caller_hotkey"] = hotkey
        if result is not None:
            attrs.update({
                "natix.probability": float(result.probability),
                "natix.cached": bool(result.cached),
                "natix.fallback": bool(result.fallback),
                "natix.tiers_run": list(result.tiers_run),
                "natix.escalated": len(result.tiers_run) > 1,
            })
            if result.fallback_reason:
                attrs["natix.fallback_reason"] = str(result.fallback_reason)
            if result.image_sha256:
                attrs["natix.image_sha256"] = str(result.image_sha256)[:16]
        root = self.tracer.start_span("miner.request", start_time=start, attributes=attrs,
                                      kind=trace.SpanKind.SERVER)
        if outcome == "error":
            root.set_status(Status(StatusCode.ERROR, "predict failed; fallback answered"))
        if result is not None:
            ctx = trace.set_span_in_context(root)
            self._engine_spans(ctx, start, end, result)
            for name, why in (result.skipped or {}).items():
                root.add_event("expert.skipped", {"expert": name, "reason": str(why)}, timestamp=start)
        root.end(end_time=end)

    def _engine_spans(self, ctx, start: int, end: int, result) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        t = dict(result.timings or {})
        ns = lambda s: int(max(0.0, float(s)) * 1e9)  # noqa: E731
        total = ns(t.get("total", 0.0)) or (end - start)
        eng = self.tracer.start_span("engine.predict", context=ctx, start_time=start,
                                     attributes={"natix.cached": bool(result.cached)})
        ectx = trace.set_span_in_context(eng)
        cursor = start
        if "decode" in t:
            sp = self.tracer.start_span("decode", context=ectx, start_time=cursor)
            cursor += ns(t["decode"])
            sp.end(end_time=cursor)
        experts_by_tier = self._experts_by_tier(result)
        for tier in result.tiers_run:
            dur = ns(t.get(f"tier:{tier}", 0.0))
            tsp = self.tracer.start_span(f"tier:{tier}", context=ectx, start_time=cursor,
                                         attributes={"natix.tier": tier})
            tctx = trace.set_span_in_context(tsp)
            for name in experts_by_tier.get(tier, []):
                key = f"expert:{name}"
                if key not in t and name not in (result.skipped or {}):
                    continue  # not part of this request
                attrs: typing.Dict[str, typing.Any] = {"natix.expert": name}
                ev = (result.evidence or {}).get(name)
                if ev is not None:
                    attrs["natix.expert.probability"] = float(ev.probability)
                    attrs["natix.expert.abstain"] = bool(ev.abstain)
                if name in (result.skipped or {}):
                    attrs["natix.expert.skipped"] = str(result.skipped[name])
                esp = self.tracer.start_span(key, context=tctx, start_time=cursor, attributes=attrs)
                if key not in t:  # failed, timed out or refused: no duration measured
                    esp.set_status(Status(StatusCode.ERROR, str(result.skipped[name])))
                if key in t:
                    length = ns(t[key])
                else:  # a timeout lasted the tier; an error or refusal has no measured length
                    length = dur if str(result.skipped[name]).startswith("timeout") else 0
                esp.end(end_time=cursor + length)
            cursor += dur
            tsp.end(end_time=cursor)
        eng.end(end_time=max(cursor, start + total))

    def _experts_by_tier(self, result) -> typing.Dict[str, typing.List[str]]:
        """Tier -> experts, from the profile when known, else every timed expert under the last tier."""
        tiers = getattr(self, "tier_experts", None)
        if tiers:
            return tiers
        timed = [k.split(":", 1)[1] for k in (result.timings or {}) if k.startswith("expert:")]
        return {result.tiers_run[-1]: timed} if result.tiers_run else {}

    def set_profile(self, profile) -> None:
        """Know which expert belongs to which tier (called once the miner's profile is known)."""
        self.tier_experts = {t.name: list(t.experts) for t in profile.tiers}

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()
