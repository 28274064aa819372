"""The cascade on Ray Serve (issue 17): `natix-miner engine serve` deploys demo-cpu on a local Ray
cluster, a miner process with `--engine.ray` answers a real dendrite through it, a killed cluster costs
fallback answers inside the deadline (never a timeout, never an invalid value), and the miner answers
from the models again once the cluster is back and the app redeployed.
"""

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from natix_miner.miner.local import axon_info, loopback_dendrite
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from tests.support.ops_support import free_port, metric, scrape
from tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs .[ray] (ray[serve])")]

FALLBACK = 0.49  # configs/demo-cpu.yaml fallback_probability
TIMEOUT = 9.0  # the validator's


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("BT_NO_PARSE_CLI_ARGS", None)
    return env


def _deploy(address: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "natix_miner.cli", "engine", "serve", "--profile", "demo-cpu", "--ray", address,
           "--app", "natix-test", "--cpus-per-replica", "0.5", "--ingress-cpus", "0.5", "--timeout", "150"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=200, cwd=REPO_ROOT)
    assert r.returncode == 0, f"engine serve failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _jpeg(seed: int) -> str:
    import numpy as np

    from natix_miner.imaging.decode import encode_jpeg_base64

    rng = np.random.default_rng(seed)
    return encode_jpeg_base64((rng.random((224, 224, 3)) * 255).astype("uint8"))


async def _ask(wallet, info, seed: int, route=ImageSynapse):
    d = loopback_dendrite(wallet)
    t0 = time.monotonic()
    try:
        r = await d.forward(info, route(image=_jpeg(seed)), timeout=TIMEOUT, deserialize=False)
    finally:
        await d.aclose_session()
    return r, time.monotonic() - t0


def _demo_experts():
    from natix_miner.config import load_profile

    return [e.name for e in load_profile("demo-cpu").tiered_experts]


DEMO_EXPERTS = _demo_experts()  # the embedded profile's experts, in tier order (what the cluster loads)


def _ready(url: str):
    try:
        r = requests.get(url + "/readyz", timeout=2)
        return r.status_code, r.json()
    except (requests.RequestException, ValueError):
        return None, None


def _valid(p) -> bool:
    return isinstance(p, float) and 0.0 <= p <= 1.0 and p == p and p != 0.5


async def _wait(cond, timeout_s: float, what: str, log_path=None):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = await cond()
        if got:
            return got
        await asyncio.sleep(0.5)
    tail = log_path.read_text()[-4000:] if log_path is not None and log_path.exists() else ""
    raise AssertionError(f"{what} not within {timeout_s:.0f} s\n{tail}")


async def test_miner_answers_through_ray_serve_falls_back_when_the_cluster_dies_and_recovers(
        tmp_path, validator_wallet, miner_wallet):
    from tests.support.ray_cluster import LocalRayCluster

    cluster = LocalRayCluster(num_cpus=2, object_store_mb=100)
    proc = None
    try:
        cluster.start()
        out = _deploy(cluster.address).stdout
        assert "expert-effnet_lite0: 1 replica(s)" in out and "cascade: 1 replica(s)" in out
        st = subprocess.run([sys.executable, "-m", "natix_miner.cli", "engine", "status", "--ray", cluster.address,
                             "--app", "natix-test"], capture_output=True, text=True, env=_env(), timeout=120)
        assert st.returncode == 0, st.stderr[-2000:]
        status = json.loads(st.stdout)
        assert status["ready"] and status["engine"] == "ray" and status["degraded"] == []
        assert {n: e["load"] for n, e in status["experts"].items()} == dict.fromkeys(DEMO_EXPERTS, "loaded")
        st = subprocess.run([sys.executable, "-m", "natix_miner.cli", "engine", "status", "--ray", cluster.address,
                             "--app", "nope"], capture_output=True, text=True, env=_env(), timeout=120)
        errors = [ln for ln in st.stderr.splitlines() if ln.startswith("error:")]
        assert st.returncode == 2 and len(errors) == 1 and "natix-miner engine serve" in errors[0], st.stderr[-2000:]

        axon_port, metrics_port = free_port(), free_port()
        url = f"http://127.0.0.1:{metrics_port}"
        log_path = tmp_path / "miner.log"
        cmd = [sys.executable, os.path.join(REPO_ROOT, "neurons", "miner.py"), "--local", "--profile", "demo-cpu",
               "--engine.ray", cluster.address, "--engine.app", "natix-test",
               "--axon.ip", "127.0.0.1", "--axon.port", str(axon_port),
               "--metrics.host", "127.0.0.1", "--metrics.port", str(metrics_port),
               "--wallet.path", miner_wallet.path,
               "--wallet.name", miner_wallet.name, "--wallet.hotkey", miner_wallet.hotkey_str,
               "--blacklist.allowed_hotkeys", validator_wallet.hotkey.ss58_address]
        with open(log_path, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)

        async def ready():
            assert proc.poll() is None, f"miner exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}"
            code, body = _ready(url)
            return body if code == 200 else None

        body = await _wait(ready, 90, "/readyz 200", log_path)
        assert body["checks"]["engine"]["loaded"] == sorted(DEMO_EXPERTS)
        info = axon_info("127.0.0.1", axon_port, miner_wallet.hotkey.ss58_address)

        # through Ray Serve: both routes, the model's answers (random noise is far from the fallback)
        answers = []
        for i, route in enumerate([ImageSynapse, ExtendedImageSynapse, ImageSynapse, ExtendedImageSynapse]):
            r, dt = await _ask(validator_wallet, info, seed=i, route=route)
            assert r.axon.status_code == 200, r.axon.status_message
            assert _valid(r.prediction) and abs(r.prediction - FALLBACK) > 1e-6, r.prediction
            answers.append(r.prediction)
        assert metric(scrape(url), "natix_requests_total", route="ImageSynapse", outcome="answered") == 2

        # the cluster dies mid-run (every Ray process SIGKILLed while requests are in flight): every answer
        # is valid and in time; those asked after the kill are the fallback
        in_flight = [asyncio.ensure_future(_ask(validator_wallet, info, seed=50 + i)) for i in range(6)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.kill)
        results = await asyncio.gather(*(_ask(validator_wallet, info, seed=100 + i) for i in range(6)))
        for r, dt in await asyncio.gather(*in_flight) + results:
            assert r.axon.status_code == 200, r.axon.status_message
            assert _valid(r.prediction) and dt < TIMEOUT, (r.prediction, f"{dt:.2f} s")
        for r, dt in results:
            assert r.prediction == pytest.approx(FALLBACK)

        async def not_ready():
            code, body = _ready(url)
            return body if code == 503 and body["checks"]["engine"].get("error") else None

        body = await _wait(not_ready, 20, "/readyz 503 naming the Ray engine", log_path)
        assert "ray engine unreachable" in body["checks"]["engine"]["error"]
        r, dt = await _ask(validator_wallet, info, seed=200)  # a lost cluster answers at once
        assert r.prediction == pytest.approx(FALLBACK) and dt < 2.0, (r.prediction, dt)

        # the cluster comes back and the app is redeployed: the miner reconnects by itself
        cluster.start()
        _deploy(cluster.address)

        async def real_answer():
            r, _ = await _ask(validator_wallet, info, seed=300)
            return r if r.axon.status_code == 200 and abs(r.prediction - FALLBACK) > 1e-6 else None

        r = await _wait(real_answer, 60, "a model answer after the cluster came back", log_path)
        assert _valid(r.prediction)
        r2, _ = await _ask(validator_wallet, info, seed=0)  # the same image as before: the same answer
        assert r2.prediction == pytest.approx(answers[0], abs=1e-6)
        body = await _wait(ready, 20, "/readyz 200 again", log_path)
        log = log_path.read_text()
        assert "lost" in log and "is back" in log
        s = scrape(url)
        assert metric(s, "natix_requests_total", route="ImageSynapse", outcome="fallback") >= 6
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.kill()
