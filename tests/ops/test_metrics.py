"""Metrics, /healthz, /readyz and tracing on a real miner (real axon, real dendrite, real experts)."""

import asyncio
import time

import pytest
import requests

from natix_miner.config import MinerConfig
from natix_miner.miner.local import MinerThread, loopback_dendrite
from natix_miner.ops.runtime import build_hooks
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from tests.support.helpers import MeanColourExpert, RaisingExpert, make_engine, profile_with
from tests.support.ops_support import OTLPReceiver, metric, scrape


def _cfg(validator_hotkey, **extra) -> MinerConfig:
    return MinerConfig.model_validate({
        "local": True, "axon": {"ip": "127.0.0.1", "port": 0},
        "blacklist": {"allowed_hotkeys": [validator_hotkey]},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0}, **extra})


def _engine():
    """Two tiers; the band [0, 1] sends every image up; tier 'slow' holds a failing expert."""
    prof = profile_with([("colour", "x", {}), ("colour2", "x", {}), ("broken", "x", {})],
                        [("fast", ["colour"], 2.0), ("slow", ["colour2", "broken"], 2.0)],
                        escalation={"low": 0.0, "high": 1.0}, breaker={"failures": 1, "cooldown_s": 600})
    return make_engine(prof, colour=MeanColourExpert(prof.expert("colour"), prof),
                       colour2=MeanColourExpert(prof.expert("colour2"), prof),
                       broken=RaisingExpert(prof.expert("broken"), prof))


async def _query(wallet, info, synapse):
    d = loopback_dendrite(wallet)
    try:
        return await d.forward(info, synapse, timeout=9.0, deserialize=False)
    finally:
        await d.aclose_session()


@pytest.fixture()
def traced_miner(validator_wallet, miner_wallet):
    receiver = OTLPReceiver()
    cfg = _cfg(validator_wallet.hotkey.ss58_address, tracing={"endpoint": receiver.url})
    hooks = build_hooks(cfg)
    try:
        # served before the miner starts: alive, not ready
        assert requests.get(hooks.url + "/healthz", timeout=5).json()["status"] == "ok"
        r = requests.get(hooks.url + "/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["checks"]["engine"]["detail"] == "starting"
        with MinerThread(cfg, engine=_engine(), hooks=hooks, wallet=miner_wallet) as m:
            yield m, hooks, receiver
    finally:
        hooks.stopped()
        receiver.close()


async def test_counters_histograms_state_and_health(traced_miner, validator_wallet, jpeg_b64, tmp_path):
    from natix_miner.miner.wallet import ephemeral_wallet

    m, hooks, receiver = traced_miner
    before = scrape(hooks.url)
    assert metric(before, "natix_requests_total", route="ImageSynapse", outcome="answered") == 0
    r1 = await _query(validator_wallet, m.info(), ImageSynapse(image=jpeg_b64))
    r2 = await _query(validator_wallet, m.info(), ImageSynapse(image=jpeg_b64))  # same bytes: cache
    r3 = await _query(validator_wallet, m.info(), ExtendedImageSynapse(image="!!not base64!!"))
    stranger = ephemeral_wallet("stranger", "x", str(tmp_path / "s"))
    r4 = await _query(stranger, m.info(), ImageSynapse(image=jpeg_b64))
    assert (r1.axon.status_code, r2.axon.status_code, r3.axon.status_code, r4.axon.status_code) == (200, 200, 200, 403)

    s = scrape(hooks.url)
    assert metric(s, "natix_requests_total", route="ImageSynapse", outcome="answered") == 2
    assert metric(s, "natix_requests_total", route="ExtendedImageSynapse", outcome="fallback") == 1
    assert metric(s, "natix_requests_total", route="ImageSynapse", outcome="blacklisted") == 1
    assert metric(s, "natix_blacklisted_total", route="ImageSynapse", reason="unregistered") == 1
    assert metric(s, "natix_fallbacks_total", reason="bad_image") == 1
    assert metric(s, "natix_request_duration_seconds_count", route="ImageSynapse") == 2
    assert metric(s, "natix_tier_duration_seconds_count", tier="fast") == 1  # second answer was cached
    assert metric(s, "natix_tier_duration_seconds_count", tier="slow") == 1
    assert metric(s, "natix_expert_duration_seconds_count", expert="colour2") == 1
    assert metric(s, "natix_decode_duration_seconds_count") == 1
    assert metric(s, "natix_cascade_requests_total", escalated="true") == 1
    assert metric(s, "natix_final_tier_total", tier="slow") == 1
    assert metric(s, "natix_cache_lookups_total", result="hit") == 1
    assert metric(s, "natix_cache_lookups_total", result="miss") == 1
    assert metric(s, "natix_expert_skipped_total", expert="broken", reason="error") == 1
    assert metric(s, "natix_prediction_count") == 3
    # scrape-time state
    assert metric(s, "natix_engine_ready") == 1 and metric(s, "natix_axon_serving") == 1
    assert metric(s, "natix_breaker_state", expert="broken") == 2  # open after one failure
    assert metric(s, "natix_breaker_state", expert="colour") == 0
    assert metric(s, "natix_expert_loaded", expert="colour") == 1
    assert metric(s, "natix_expert_load_status", expert="colour", status="loaded") == 1
    assert metric(s, "natix_cache_hit_ratio") == pytest.approx(0.5)
    assert metric(s, "natix_admission_inflight") == 0 and metric(s, "natix_admission_refused_total") == 0
    assert metric(s, "natix_requests_total", outcome="shed") == 0
    assert metric(s, "natix_miner_info", hotkey=m.hotkey, mode="local") == 1
    assert metric(s, "process_resident_memory_bytes") > 0
    assert time.time() - metric(s, "natix_last_request_timestamp_seconds") < 60
    assert not any(n == "natix_vault_up" for n, _ in s)  # no Vault configured

    health = requests.get(hooks.url + "/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["miner_started"] is True
    ready = requests.get(hooks.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["hotkey"] == m.hotkey
    assert body["checks"]["engine"]["loaded"] == ["broken", "colour", "colour2"]
    assert body["checks"]["engine"]["breakers_open"] == ["broken"]
    assert body["checks"]["axon"] == {"ok": True, "listening": True, "port": m.port}
    assert body["failing"] == [] and {"tier0", "breakers", "decode", "admission"} <= set(body["checks"])
    assert requests.get(hooks.url + "/nope", timeout=5).status_code == 404

    # tracing: one trace per answered request, spans per tier and expert
    assert hooks.tracer.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(sp["name"] == "miner.request" for sp in receiver.spans) < 3:
        await asyncio.sleep(0.1)
    roots = [sp for sp in receiver.spans if sp["name"] == "miner.request"]
    assert len(roots) == 3
    full = next(sp for sp in roots if sp["attrs"].get("natix.cached") is False and sp["attrs"]["natix.outcome"] == "answered")
    assert full["service"] == "natix-miner"
    assert full["attrs"]["natix.tiers_run"] == ["fast", "slow"] and full["attrs"]["natix.escalated"] is True
    assert full["attrs"]["natix.caller_hotkey"] == validator_wallet.hotkey.ss58_address
    spans = {sp["name"]: sp for sp in receiver.spans if sp["trace_id"] == full["trace_id"]}
    assert {"miner.request", "engine.predict", "decode", "tier:fast", "tier:slow", "expert:colour", "expert:colour2",
            "expert:broken"} <= set(spans)
    assert spans["engine.predict"]["parent"] == full["span_id"]
    assert spans["tier:slow"]["parent"] == spans["engine.predict"]["span_id"]
    assert spans["expert:colour2"]["parent"] == spans["tier:slow"]["span_id"]
    assert spans["tier:fast"]["end"] <= spans["tier:slow"]["start"]
    assert 0.0 < spans["expert:colour"]["attrs"]["natix.expert.probability"] < 1.0
    assert spans["expert:broken"]["attrs"]["natix.expert.skipped"].startswith("error")
    assert "expert.skipped" in full["events"]
    bad = next(sp for sp in roots if sp["attrs"]["natix.outcome"] == "fallback")
    assert bad["attrs"]["natix.fallback_reason"].startswith("bad_image")


class MissingWeightsExpert(MeanColourExpert):
    """A real expert whose weights file is missing: load raises, as a broken deployment would."""

    def load(self, device):
        with open(self.options["weights"], "rb"):
            pass


def test_readyz_fails_when_no_expert_loaded(validator_wallet, miner_wallet, tmp_path):
    prof = profile_with([("ghost", "x", {"weights": str(tmp_path / "missing.safetensors")})],
                        [("fast", ["ghost"], 1.0)])
    cfg = _cfg(validator_wallet.hotkey.ss58_address, allow_degraded=True)  # else the start is refused
    hooks = build_hooks(cfg)
    try:
        engine = make_engine(prof, ghost=MissingWeightsExpert(prof.expert("ghost"), prof))
        with MinerThread(cfg, engine=engine, hooks=hooks, wallet=miner_wallet):
            r = requests.get(hooks.url + "/readyz", timeout=5)
            assert r.status_code == 503
            eng = r.json()["checks"]["engine"]
            assert eng["ok"] is False and eng["failed"] == ["ghost"]
            s = scrape(hooks.url)
            assert metric(s, "natix_expert_load_status", expert="ghost", status="failed") == 1
            assert metric(s, "natix_expert_loaded", expert="ghost") == 0
    finally:
        hooks.stopped()


def test_hooks_never_raise_and_tracing_is_off_by_default(validator_wallet):
    cfg = _cfg(validator_wallet.hotkey.ss58_address, metrics={"enabled": False})
    hooks = build_hooks(cfg)
    assert hooks.server is None and hooks.tracer is None
    hooks.request("ImageSynapse", "answered", 0.01, result=object())  # garbage result: swallowed
    hooks.request("Weird", "odd", -1.0)
    hooks.blacklisted("ImageSynapse", "stake 3.0 below 10.0")
    body, _ = hooks.metrics.render()
    text = body.decode()
    assert 'natix_blacklisted_total{reason="low_stake",route="ImageSynapse"} 1.0' in text
    assert 'natix_requests_total{hotkey="",outcome="error",route="other"} 1.0' in text  # no miner bound: no hotkey
    hooks.stopped()


def test_traces_url():
    from natix_miner.ops.tracing import traces_url

    assert traces_url("http://phoenix:6006") == "http://phoenix:6006/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/") == "https://c/otlp/v1/traces"
    with pytest.raises(ValueError):
        traces_url("phoenix:6006")
