"""Issue 8's done-when, end to end: a real OpenBao dev server holds the hotkey mnemonic; the miner
(`python neurons/miner.py --local`, its own process, AppRole auth from the environment) reads it,
loads a real two-tier timm cascade (random weights), serves a real axon; a loopback dendrite queries
it; /metrics, /healthz and /readyz are scraped; the served hotkey is the mnemonic's; no file the miner
wrote and no line it logged contains the mnemonic."""

from tests.support.paths import REPO_ROOT
import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from natix_miner.miner.local import axon_info, loopback_dendrite
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from tests.support.ops_support import free_port, metric, scrape, start_bao, write_profile

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def bao():
    server = start_bao("e2e-root")
    yield server
    server.stop()


def _leaks(path: str, needles) -> list:
    hits = []
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            try:
                data = open(p, "rb").read()
            except OSError:
                continue
            if f.endswith(".gz"):
                import gzip

                data = gzip.decompress(data)
            hits += [(p, n) for n in needles if n.encode() in data]
    return hits


async def _query(wallet, info, synapse):
    d = loopback_dendrite(wallet)
    try:
        return await d.forward(info, synapse, timeout=9.0, deserialize=False)
    finally:
        await d.aclose_session()


async def test_miner_reads_its_hotkey_from_vault_serves_and_reports(bao, tmp_path, validator_wallet, jpeg_b64):
    from bittensor_wallet import Keypair

    mnemonic = Keypair.generate_mnemonic(12)
    hotkey = Keypair.create_from_mnemonic(mnemonic).ss58_address
    coldkey = Keypair.create_from_mnemonic(Keypair.generate_mnemonic(12)).ss58_address
    bao.put("natix/e2e-hotkey", {"mnemonic": mnemonic, "coldkey_ss58": coldkey})
    role_id, secret_id = bao.approle("e2e-miner", ["secret/data/natix/e2e-hotkey"])

    work, home, logs = tmp_path / "work", tmp_path / "home", tmp_path / "logs"
    work.mkdir()
    tiny = {"model": "mobilenetv3_small_050", "image_size": 64}
    prof = write_profile(work / "e2e.yaml", [("fast_net", "timm", dict(tiny)), ("slow_net", "timm", dict(tiny))],
                         [("fast", ["fast_net"], 5.0), ("slow", ["slow_net"], 5.0)],
                         escalation={"low": 0.0, "high": 1.0})  # every image climbs both tiers
    metrics_port, axon_port = free_port(), free_port()
    env = dict(os.environ, HOME=str(home), VAULT_ADDR=bao.addr, VAULT_ROLE_ID=role_id, VAULT_SECRET_ID=secret_id,
               NATIX_VAULT_PATH="natix/e2e-hotkey", PYTHONUNBUFFERED="1")
    for k in ("VAULT_TOKEN", "BT_NO_PARSE_CLI_ARGS"):
        env.pop(k, None)
    cmd = [sys.executable, os.path.join(ROOT, "neurons", "miner.py"), "--local", "--profile", prof,
           "--axon.ip", "127.0.0.1", "--axon.port", str(axon_port), "--metrics.host", "127.0.0.1",
           "--metrics.port", str(metrics_port), "--logging.dir", str(logs), "--logging.level", "DEBUG",
           "--wallet.path", str(tmp_path / "wallets"),
           "--blacklist.allowed_hotkeys", validator_wallet.hotkey.ss58_address]
    out_path = tmp_path / "stdout.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{metrics_port}"
    try:
        deadline, ready = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.get(url + "/readyz", timeout=2)
                if r.status_code == 200:
                    ready = r.json()
                    break
                assert requests.get(url + "/healthz", timeout=2).json()["status"] == "ok"
            except requests.RequestException:
                pass
            await asyncio.sleep(0.5)
        assert ready is not None, f"miner never became ready (rc={proc.poll()}):\n{out_path.read_text()[-4000:]}"
        assert ready["hotkey"] == hotkey
        assert ready["checks"]["vault"] == {"ok": True, "detail": "active"}
        assert ready["checks"]["engine"]["loaded"] == ["fast_net", "slow_net"]

        info = axon_info("127.0.0.1", axon_port, hotkey, coldkey)
        r1 = await _query(validator_wallet, info, ImageSynapse(image=jpeg_b64))
        assert r1.axon.status_code == 200, r1.axon.status_message
        assert 0.0 <= r1.prediction <= 1.0 and r1.prediction != 0.5
        # the axon checks the dendrite's signature over *its own* hotkey: a request addressed to any
        # other hotkey fails, so the served hotkey is the mnemonic's
        other = axon_info("127.0.0.1", axon_port, coldkey, coldkey)
        assert (await _query(validator_wallet, other, ImageSynapse(image=jpeg_b64))).axon.status_code in (401, 403)
        r2 = await _query(validator_wallet, info, ExtendedImageSynapse(image=jpeg_b64))
        assert r2.axon.status_code == 200 and abs(r2.prediction - r1.prediction) < 1e-9
        from natix_miner.miner.wallet import ephemeral_wallet

        stranger = ephemeral_wallet("stranger", "x", str(tmp_path / "stranger"))
        assert (await _query(stranger, info, ImageSynapse(image=jpeg_b64))).axon.status_code == 403

        s = scrape(url)
        assert metric(s, "natix_requests_total", route="ImageSynapse", outcome="answered") == 1
        assert metric(s, "natix_requests_total", route="ExtendedImageSynapse", outcome="answered") == 1
        assert metric(s, "natix_requests_total", outcome="blacklisted") == 1
        assert metric(s, "natix_tier_duration_seconds_count", tier="slow") == 1
        assert metric(s, "natix_expert_duration_seconds_count", expert="fast_net") == 1
        assert metric(s, "natix_cascade_requests_total", escalated="true") == 1
        assert metric(s, "natix_cache_lookups_total", result="hit") == 1
        assert metric(s, "natix_expert_loaded", expert="slow_net") == 1
        assert metric(s, "natix_vault_up") == 1
        assert metric(s, "natix_miner_info", hotkey=hotkey) == 1
        assert requests.get(url + "/healthz", timeout=5).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(10)
    assert rc == 0, out_path.read_text()[-3000:]

    log_text = (logs / "miner.log").read_text()
    assert hotkey in log_text and "loaded from Vault" in log_text
    words = mnemonic.split()
    needles = [mnemonic] + [" ".join(words[i:i + 3]) for i in range(len(words) - 2)] + [secret_id]
    assert _leaks(str(tmp_path), needles) == []  # logs, stdout/stderr, HOME, cwd, wallet dir
    assert not (tmp_path / "wallets").exists()
