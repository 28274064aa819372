"""The Ray Serve plan from a profile and the miner-side client's rules, without a cluster (fast).

The cluster end-to-end (deploy, miner, kill, recover) is tests/engine/test_ray_serve.py.
"""

import asyncio
import importlib.util
import subprocess
import sys
import time

import pytest

from natix_miner.config import ExpertSpec, MinerConfig
from natix_miner.engine.client import EngineClient, engine_factory_for, local_engine
from natix_miner.engine.ray_client import RayEngineClient, RayUnavailable
from natix_miner.engine.ray_serve import expert_resources, ingress_profile, plan
from tests.support.helpers import profile_with


def _spec(**kw) -> ExpertSpec:
    return ExpertSpec.model_validate({"name": "x", "family": "timm", **kw})


def test_resources_follow_the_profile():
    cpu = expert_resources(_spec(device="cpu", replicas=3), cpu_per_replica=2.0)
    assert (cpu.num_replicas, cpu.num_cpus, cpu.num_gpus, cpu.device) == (3, 2.0, 0.0, "cpu")
    hinted = expert_resources(_spec(devices=["cuda:0", "cuda:1"], memory_gb=20), gpu_memory_gb=80)
    assert (hinted.num_replicas, hinted.num_gpus, hinted.device) == (2, 0.25, "cuda")
    assert expert_resources(_spec(device="cuda")).num_gpus == 1.0  # no hint: a whole card
    assert expert_resources(_spec(device="cuda", memory_gb=500)).num_gpus == 1.0  # never more than one
    assert expert_resources(_spec(device="auto"), has_gpus=False).device == "cpu"
    assert expert_resources(_spec(device="auto"), has_gpus=True).device == "cuda"


def test_plan_has_one_deployment_per_tiered_expert_and_the_ingress_last():
    prof = profile_with([("a", "x", {}), ("b", "x", {}), ("unused", "x", {})], [("fast", ["a"], 1.0),
                                                                                ("slow", ["b"], 1.0)])
    names = [p.name for p in plan(prof, ingress_replicas=2)]
    assert names == ["expert-a", "expert-b", "cascade"]
    assert plan(prof, ingress_replicas=2)[-1].num_replicas == 2
    assert [p.name for p in plan(prof, skip={"b"})] == ["expert-a", "cascade"]


def test_ingress_profile_passes_every_image_on_at_once():
    prof = profile_with([("a", "x", {}), ("b", "x", {})], [("fast", ["a", "b"], 1.0)])
    prof.experts[0].max_batch = 32
    ing = ingress_profile(prof, {"a"})
    a, b = ing.experts
    assert (a.max_batch, a.max_wait_ms, a.concurrency, a.device, a.replicas) == (1, 0.0, 256, "cpu", 1)
    assert b == prof.experts[1]
    assert prof.experts[0].max_batch == 32  # the profile itself is untouched


def test_the_config_picks_the_engine():
    assert engine_factory_for(MinerConfig()) is local_engine
    cfg = MinerConfig.model_validate({"engine": {"ray": "10.0.0.1:6379", "app": "prod"}})
    prof = profile_with([("a", "x", {})], [("fast", ["a"], 1.0)])
    client = engine_factory_for(cfg)(prof)
    assert isinstance(client, RayEngineClient) and isinstance(client, EngineClient)
    assert (client.address, client.app) == ("10.0.0.1:6379", "prod")


async def test_not_connected_answers_the_fallback_at_once_and_never_one_half():
    prof = profile_with([("a", "x", {})], [("fast", ["a"], 1.0)], fallback_probability=0.5)
    client = RayEngineClient(prof, "127.0.0.1:1")
    t0 = time.monotonic()
    res = await client.predict(b"\xff\xd8 not started", deadline=time.monotonic() + 5)
    assert time.monotonic() - t0 < 0.5
    assert res.fallback and res.fallback_reason == "ray_unavailable" and res.probability == 0.4999
    st = client.status()
    assert st["ready"] is False and st["engine"] == "ray" and st["ray"]["fallback_total"] == 1


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs .[ray]")
async def test_unreachable_cluster_fails_the_start_naming_the_fix():
    prof = profile_with([("a", "x", {})], [("fast", ["a"], 1.0)])
    client = RayEngineClient(prof, "127.0.0.1:1", app="nope", connect_timeout_s=6)
    t0 = time.monotonic()
    with pytest.raises(RayUnavailable) as err:
        await client.start()
    assert time.monotonic() - t0 < 20
    msg = str(err.value)
    assert "127.0.0.1:1" in msg and "natix-miner engine serve" in msg and "NATIX_ENGINE_RAY" in msg
    assert client._proc is None and not client.ready  # the bridge is gone
    await asyncio.sleep(0)


def test_the_miner_side_imports_neither_torch_nor_ray():
    code = ("import sys, natix_miner.engine.ray_client, natix_miner.engine.client; "
            "bad = [m for m in ('torch', 'ray', 'transformers', 'natix_miner.engine.engine') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs .[ray]")
@pytest.mark.parametrize("verb", [["serve", "--profile", "demo-cpu"], ["status"]])
def test_engine_commands_on_a_dead_address_are_one_error_line(verb):
    from tests.support.ops_support import free_port

    cmd = [sys.executable, "-m", "natix_miner.cli", "engine", *verb, "--ray", f"127.0.0.1:{free_port()}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray cluster"), r.stderr
    assert "ray start --head" in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs .[ray]")
def test_miner_with_an_unreachable_ray_engine_exits_7_naming_the_fix(tmp_path):
    import os

    from tests.support.ops_support import free_port
    from tests.support.paths import REPO_ROOT

    dead = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "neurons", "miner.py"), "--local", "--profile", "demo-cpu",
           "--engine.ray", dead, "--axon.ip", "127.0.0.1", "--axon.port", str(free_port()),
           "--metrics.enabled", "false", "--wallet.path", str(tmp_path / "w"), "--axon.state_dir", str(tmp_path)]
    env = dict(os.environ)
    env.pop("BT_NO_PARSE_CLI_ARGS", None)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 7, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and dead in errors[0] and "natix-miner engine serve" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_evidence_details_cross_as_plain_values():
    import numpy as np

    from natix_miner.engine.ray_serve import plain

    class Tensorish:
        def __str__(self):
            return "tensor([1.])"

    got = plain({"logit": np.float32(1.5), "boxes": np.array([[1, 2], [3, 4]]), "t": Tensorish(), 3: ("a", None)})
    assert got == {"logit": 1.5, "boxes": [[1, 2], [3, 4]], "t": "tensor([1.])", "3": ["a", None]}
    assert type(got["logit"]) is float


# -- the client's rules against a scripted bridge (tests/support/fake_ray_bridge.py) ------------------

FAKE = "tests.support.fake_ray_bridge"


@pytest.fixture()
def fake_bridge(monkeypatch, tmp_path):
    from tests.support.paths import REPO_ROOT

    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    count = tmp_path / "starts"
    monkeypatch.setenv("FAKE_BRIDGE_COUNT", str(count))

    def make(mode: str, **kw) -> RayEngineClient:
        monkeypatch.setenv("FAKE_BRIDGE_MODE", mode)
        prof = profile_with([("a", "x", {})], [("fast", ["a"], 1.0)], fallback_probability=0.3)
        return RayEngineClient(prof, "127.0.0.1:1", bridge=FAKE, connect_timeout_s=30, probe_interval_s=0.2, **kw)

    make.starts = lambda: len(count.read_text().splitlines()) if count.exists() else 0
    return make


async def test_an_answer_of_one_half_never_crosses_the_boundary(fake_bridge):
    client = fake_bridge("answer")
    await client.start()
    try:
        assert client.ready and client.status()["experts"]["a"]["load"] == "loaded"
        res = await client.predict(b"jpeg", deadline=time.monotonic() + 2)
        assert not res.fallback and res.probability == 0.4999 and res.tiers_run == ["fast"]
    finally:
        await client.close()


async def test_a_slow_cluster_costs_the_fallback_inside_the_deadline(fake_bridge):
    client = fake_bridge("hang")
    await client.start()
    try:
        t0 = time.monotonic()
        res = await client.predict(b"jpeg", deadline=t0 + 1.0)
        dt = time.monotonic() - t0
        assert res.fallback and res.fallback_reason == "ray_timeout" and res.probability == 0.3
        assert 0.8 < dt < 1.15, dt  # answered at the deadline less 50 ms (a loaded host may run the timer late)
    finally:
        await client.close()


async def test_a_hung_or_dead_cluster_is_lost_then_reconnected(fake_bridge, monkeypatch):
    client = fake_bridge("silent", stale_after_s=1.0, max_backoff_s=0.5)
    await client.start()
    try:
        end = time.monotonic() + 10
        while client.connected and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert not client.connected and "no status" in client.status()["error"]
        t0 = time.monotonic()
        res = await client.predict(b"jpeg", deadline=t0 + 5)
        assert res.fallback_reason == "ray_unavailable" and time.monotonic() - t0 < 0.2
        monkeypatch.setenv("FAKE_BRIDGE_MODE", "answer")  # the cluster is back: the next bridge answers
        while not client.ready and time.monotonic() < end:
            await asyncio.sleep(0.1)
        assert client.ready and client.reconnects >= 1 and fake_bridge.starts() >= 2
        assert not (await client.predict(b"jpeg", deadline=time.monotonic() + 2)).fallback
        monkeypatch.setenv("FAKE_BRIDGE_MODE", "die")  # the bridge process exits: lost at once
        monkeypatch.setenv("FAKE_BRIDGE_DIE_S", "0.3")
        client._writer.close()  # end the current bridge so the next one starts in "die" mode
        end = time.monotonic() + 10
        seen_lost = False
        while time.monotonic() < end and fake_bridge.starts() < 4:
            seen_lost = seen_lost or not client.connected
            await asyncio.sleep(0.05)
        assert seen_lost and fake_bridge.starts() >= 4  # died, restarted, died, restarted
    finally:
        await client.close()
    assert client._proc is None


async def test_a_profile_other_than_the_deployed_one_is_warned(fake_bridge, caplog):
    client = fake_bridge("answer")  # the scripted app serves profile "test"
    client.profile = client.profile.model_copy(update={"name": "other"})
    with caplog.at_level("WARNING", logger="natix_miner.engine.ray"):
        await client.start()
    await client.close()
    assert any("serves profile test" in r.getMessage() and "--profile other" in r.getMessage() for r in caplog.records)
