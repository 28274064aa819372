"""One process, many hotkeys (issue 17, item 1): N real axons, one real engine, real dendrites.

The group serves two hotkeys in local mode: the validators' own dendrite (bittensor 9.12.2) gets
valid answers on both ports and both routes; an image sent to both hotkeys runs the expert once (its
batches are counted, and ``natix_cache_shared_hits_total`` says which hotkey was served from the
other's computation); a stranger gets 403 on both; a bad hotkeys file is one ``error:`` line; a taken
port or a deregistered hotkey drops that hotkey only.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
import yaml

from natix_miner.config import MinerConfig
from natix_miner.miner import errors
from natix_miner.miner.errors import ConfigError
from natix_miner.miner.hotkeys import MinerGroup, SharedHits, load_hotkeys
from natix_miner.miner.local import MinerThread, axon_info, loopback_dendrite
from natix_miner.miner.neuron import _free_port
from natix_miner.miner.wallet import ephemeral_wallet
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from tests.miner.test_chain import LocalChain
from tests.support.engine_experts import make_profile, noise_jpeg
from tests.support.ops_support import metric, scrape
from tests.support.paths import REPO_ROOT

BT9_PYTHON = os.path.join(REPO_ROOT, ".venv-bt9", "bin", "python")
MODEL_URL = "https://huggingface.co/acme/roadwork"


def _b64(seed: int) -> str:
    import base64

    return base64.b64encode(noise_jpeg(seed)).decode()


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _profile(tmp_path):
    return make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness", "max_batch": 4}],
                        tiers=[{"name": "t", "experts": ["b"]}])


def _cfg(tmp_path, hotkeys_file, validator_hotkey, profile, **extra) -> MinerConfig:
    mg = _write(tmp_path / "metagraph.yaml", [{"hotkey": validator_hotkey, "stake": 5000, "validator_permit": True}])
    data = {"local": True, "local_metagraph": mg, "hotkeys": hotkeys_file, "model_url": MODEL_URL,
            "wallet": {"path": str(tmp_path / "wallets")}, "axon": {"ip": "127.0.0.1", "port": 0},
            "metrics": {"enabled": False}, "profile": profile.path}
    data.update(extra)
    return MinerConfig.model_validate(data)


def _wallets(tmp_path, *names):
    return {n: ephemeral_wallet(n, "default", str(tmp_path / "wallets")) for n in names}


def _images(engine) -> int:
    """Images the expert has scored so far (the sum of its batch sizes)."""
    return sum(engine.experts["b"].batches)


async def _query(wallet, miner, synapse):
    d = loopback_dendrite(wallet)
    try:
        return await d.forward(axon_info("127.0.0.1", miner.port, miner.wallet.hotkey.ss58_address), synapse,
                               timeout=9.0, deserialize=False)
    finally:
        await d.aclose_session()


@pytest.fixture(scope="module")
def two_hotkeys(tmp_path_factory, validator_wallet):
    """One group, two hotkeys (wallet files m1/default and m2/default), metrics on a free port."""
    from natix_miner.engine import Engine
    from natix_miner.ops.runtime import build_hooks

    tmp = tmp_path_factory.mktemp("two-hotkeys")
    wallets = _wallets(tmp, "m1", "m2")
    hk = _write(tmp / "hotkeys.yaml", [{"name": "hk1", "wallet_name": "m1", "wallet_hotkey": "default", "port": 0},
                                       {"name": "hk2", "wallet_name": "m2", "wallet_hotkey": "default", "port": 0}])
    prof = _profile(tmp)
    cfg = _cfg(tmp, hk, validator_wallet.hotkey.ss58_address, prof,
               metrics={"enabled": True, "host": "127.0.0.1", "port": 0})
    hooks = build_hooks(cfg)
    group = MinerGroup(cfg, hooks=hooks, engine=Engine(prof))
    with MinerThread(cfg, runner=group):
        assert {n: m.wallet.hotkey.ss58_address for n, m in group.miners.items()} == {
            n: w.hotkey.ss58_address for n, w in zip(("hk1", "hk2"), wallets.values())}  # the files were read
        for m in group.miners.values():  # one engine, one admission queue; a gate per hotkey
            assert m.engine is group.engine and m.admission is group.admission
        assert group.miners["hk1"].gate is not group.miners["hk2"].gate
        yield group, hooks


def test_both_hotkeys_answer_the_validators_dendrite_on_both_routes_and_compute_once(two_hotkeys, validator_wallet):
    """bittensor 9.12.2 (its own venv) sends one image to both ports on both routes, all at once."""
    group, hooks = two_hotkeys
    assert os.path.exists(BT9_PYTHON), "run scripts/setup.sh first: .venv-bt9 is part of the install"
    m1, m2 = group.miners["hk1"], group.miners["hk2"]
    before, images = scrape(hooks.url), _images(group.engine)
    wallet_dir = os.path.dirname(os.path.dirname(validator_wallet.hotkey_file.path))
    targets = [f"--target={m.port}:{m.wallet.hotkey.ss58_address}:{route}"
               for m in (m1, m2) for route in ("ImageSynapse", "ExtendedImageSynapse")]
    out = subprocess.run([BT9_PYTHON, os.path.join(REPO_ROOT, "tests", "support", "bt9_client.py"),
                          "--wallet-path", os.path.dirname(wallet_dir), "--wallet-name", validator_wallet.name,
                          "--wallet-hotkey", validator_wallet.hotkey_str, *targets],
                         input=_b64(1), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()[-4:]]
    assert sorted((r["port"], r["route"]) for r in rows) == sorted(
        (m.port, route) for m in (m1, m2) for route in ("ImageSynapse", "ExtendedImageSynapse"))
    for r in rows:
        assert r["bittensor_version"] == "9.12.2" and r["status_code"] == 200, r
        assert 0.0 <= r["prediction"] <= 1.0 and r["prediction"] != 0.5
        assert r["model_url"] == (MODEL_URL if r["route"] == "ExtendedImageSynapse" else None)
    assert len({r["prediction"] for r in rows}) == 1  # one image, one answer
    assert _images(group.engine) - images == 1  # four requests on two hotkeys, the expert ran once
    after = scrape(hooks.url)
    for m in (m1, m2):
        hk = m.wallet.hotkey.ss58_address
        assert metric(after, "natix_requests_total", hotkey=hk, outcome="answered") - \
            metric(before, "natix_requests_total", hotkey=hk, outcome="answered") == 2
        assert metric(after, "natix_axon_serving", hotkey=hk) == 1
        assert metric(after, "natix_miner_uid", hotkey=hk) == -1  # local mode: not in the local metagraph
    # one hotkey computed; the other hotkey's two answers came from that computation
    assert metric(after, "natix_cache_shared_hits_total") - metric(before, "natix_cache_shared_hits_total") == 2
    info = [dict(labels) for name, labels in after if name == "natix_miner_info"]
    assert sorted((i["name"], i["hotkey"], i["mode"], i["profile"]) for i in info) == [
        (n, m.wallet.hotkey.ss58_address, "local", "test") for n, m in group.miners.items()]


async def test_the_same_image_on_both_hotkeys_at_once_runs_the_expert_once(two_hotkeys, validator_wallet):
    group, hooks = two_hotkeys
    m1, m2 = group.miners["hk1"], group.miners["hk2"]
    images, shared = _images(group.engine), sum(group.shared.counts.values())
    image = _b64(2)
    r1, r2 = await asyncio.gather(_query(validator_wallet, m1, ImageSynapse(image=image)),
                                  _query(validator_wallet, m2, ImageSynapse(image=image)))
    assert (r1.axon.status_code, r2.axon.status_code) == (200, 200)
    assert r1.prediction == r2.prediction
    assert _images(group.engine) - images == 1
    assert sum(group.shared.counts.values()) - shared == 1
    r3 = await _query(validator_wallet, m2, ExtendedImageSynapse(image=_b64(3)))  # a new image: computed
    assert r3.axon.status_code == 200 and _images(group.engine) - images == 2


async def test_a_stranger_gets_403_on_every_hotkey_and_readyz_lists_them(two_hotkeys, tmp_path):
    group, hooks = two_hotkeys
    stranger = ephemeral_wallet("stranger", "x", str(tmp_path / "s"))
    before = scrape(hooks.url)
    for m in group.miners.values():
        r = await _query(stranger, m, ImageSynapse(image=_b64(4)))
        assert r.axon.status_code == 403 and r.prediction == -1.0
    after = scrape(hooks.url)
    for m in group.miners.values():
        hk = m.wallet.hotkey.ss58_address
        assert metric(after, "natix_requests_total", hotkey=hk, outcome="blacklisted") - \
            metric(before, "natix_requests_total", hotkey=hk, outcome="blacklisted") == 1
    ready = requests.get(hooks.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert set(body["hotkeys"]) == {"hk1", "hk2"} and body["dropped"] == {}
    assert all(h["ready"] and h["axon"]["listening"] for h in body["hotkeys"].values())
    assert body["checks"]["engine"]["ok"] and "axon" not in body["checks"]


@pytest.mark.parametrize("rows, needle", [
    ([{"name": "a", "wallet_name": "w", "wallet_hotky": "h", "port": 8091}], "unknown key 'wallet_hotky' (did you mean wallet_hotkey?)"),
    ([{"name": "a", "wallet_name": "w", "wallet_hotkey": "h1", "port": 8091},
      {"name": "b", "wallet_name": "w", "wallet_hotkey": "h2", "port": 8091}], "port 8091 is used by both a and b"),
    ([{"name": "a", "wallet_name": "w", "wallet_hotkey": "h", "port": 8091},
      {"name": "b", "wallet_name": "w", "wallet_hotkey": "h", "port": 8092}], "wallet w/h is used by both a and b"),
    ([{"name": "a", "wallet_name": "w", "wallet_hotkey": "h", "port": 1},
      {"name": "a", "wallet_name": "w", "wallet_hotkey": "i", "port": 2}], "name a is used by both a and a"),
    ([{"name": "a", "wallet_name": "w", "wallet_hotkey": "h", "port": 0}], "port 0 (a free port) is for --local only"),
    ([{"name": "a", "wallet_name": "w", "wallet_hotkey": "h"}], "entry 0 (a): port is required"),
    ({"name": "a"}, "must be a non-empty YAML list"),
])
def test_a_bad_hotkeys_file_is_one_config_error_naming_the_fix(tmp_path, rows, needle):
    with pytest.raises(ConfigError) as err:
        load_hotkeys(_write(tmp_path / "hk.yaml", rows), local=False)
    assert needle in str(err.value) and str(err.value).startswith("--hotkeys / NATIX_HOTKEYS: ")
    assert "\n" not in str(err.value)


def test_the_run_command_prints_one_error_line_for_a_bad_file(tmp_path):
    bad = _write(tmp_path / "hk.yaml", [{"name": "a", "wallet_name": "w", "wallet_hotkey": "h", "prot": 8091}])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "neurons", "miner.py"), "--local",
                          "--metrics.enabled", "false"], env={**env, "NATIX_HOTKEYS": bad},
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == errors.CONFIG, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "unknown key 'prot' (did you mean port?)" in lines[0], out.stderr[-2000:]
    assert "port is required" not in lines[0]  # the misspelt key is named once
    assert "Traceback" not in out.stderr


def _held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


async def test_a_taken_port_drops_that_hotkey_and_the_other_serves(tmp_path, validator_wallet, caplog):
    from natix_miner.engine import Engine
    from natix_miner.ops.logs import unmute_project_loggers

    unmute_project_loggers()  # importing bittensor mutes the loggers that exist by then (natix-miner run undoes it too)
    caplog.set_level("INFO", logger="natix_miner")
    _wallets(tmp_path, "m1", "m2")
    prof = _profile(tmp_path)
    holder, port = _held_port()
    with holder:
        hk = _write(tmp_path / "hk.yaml", [{"name": "taken", "wallet_name": "m1", "wallet_hotkey": "default", "port": port},
                                           {"name": "free", "wallet_name": "m2", "wallet_hotkey": "default", "port": 0}])
        cfg = _cfg(tmp_path, hk, validator_wallet.hotkey.ss58_address, prof)
        group = MinerGroup(cfg, engine=Engine(prof))
        with MinerThread(cfg, runner=group):
            assert list(group.miners) == ["free"] and f":{port} is not available" in group.dropped["taken"]
            assert f"pick another port for taken in {hk}" in group.dropped["taken"]  # the file, not --axon.port
            r = await _query(validator_wallet, group.miners["free"], ImageSynapse(image=_b64(5)))
            assert r.axon.status_code == 200 and 0.0 <= r.prediction <= 1.0
            ok, body = group.readiness()
            assert ok and set(body["hotkeys"]) == {"free"} and "taken" in body["dropped"]
        lines = [r.getMessage() for r in caplog.records]
        assert any(ln.startswith("hotkey taken dropped (1 left): axon port") for ln in lines), lines[-20:]
        assert any(ln.startswith("answered ImageSynapse from ") and ln.endswith(" on free") for ln in lines)
        assert any(ln.startswith("status: uid - |") and ln.endswith("(free)") for ln in lines)
        # every port taken: nothing left to serve, the port's exit code
        hk = _write(tmp_path / "hk2.yaml", [{"name": "taken", "wallet_name": "m1", "wallet_hotkey": "default", "port": port}])
        cfg = _cfg(tmp_path, hk, validator_wallet.hotkey.ss58_address, prof)
        with pytest.raises(RuntimeError) as err:
            with MinerThread(cfg, runner=MinerGroup(cfg, engine=Engine(prof))):
                pass
    cause = err.value.__cause__
    assert isinstance(cause, errors.StartupError) and cause.code == errors.PORT and "no hotkey" in str(cause)


async def test_chain_mode_serves_each_hotkey_and_drops_one_deregistered(tmp_path, validator_wallet):
    from natix_miner.engine import Engine

    wallets = _wallets(tmp_path, "m1", "m2")
    prof = _profile(tmp_path)
    chain = LocalChain()
    chain.register(validator_wallet.hotkey.ss58_address, stake=5000, permit=True)
    for w in wallets.values():
        chain.register(w.hotkey.ss58_address)
    hk = _write(tmp_path / "hk.yaml", [{"name": n, "wallet_name": n, "wallet_hotkey": "default", "port": _free_port()}
                                       for n in wallets])
    cfg = _cfg(tmp_path, hk, validator_wallet.hotkey.ss58_address, prof, local=False, sync_interval_s=0.2,
               axon={"ip": "127.0.0.1", "external_ip": "127.0.0.1"},
               metrics={"enabled": True, "host": "127.0.0.1", "port": 0})
    from natix_miner.ops.runtime import build_hooks

    hooks = build_hooks(cfg)
    group = MinerGroup(cfg, engine=Engine(prof), subtensor=chain, hooks=hooks)
    with MinerThread(cfg, runner=group):
        assert sorted(s[3] for s in chain.served) == sorted(w.hotkey.ss58_address for w in wallets.values())
        assert {n: m.uid for n, m in group.miners.items()} == {"m1": 1, "m2": 2}
        with chain.lock:
            del chain.neurons[wallets["m2"].hotkey.ss58_address]
        t0 = time.monotonic()
        while "m2" not in group.dropped and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.05)
        assert "no longer registered" in group.dropped["m2"] and list(group.miners) == ["m1"]
        syncs = chain.syncs
        await asyncio.sleep(0.7)
        assert 1 <= chain.syncs - syncs <= 5  # one metagraph read per resync for every hotkey
        r = await _query(validator_wallet, group.miners["m1"], ImageSynapse(image=_b64(6)))
        assert r.axon.status_code == 200
        s = scrape(hooks.url)  # the dropped hotkey reads not serving (NatixMinerNotReady fires), its uid -1
        h1, h2 = (wallets[n].hotkey.ss58_address for n in ("m1", "m2"))
        assert metric(s, "natix_axon_serving", hotkey=h1) == 1 and metric(s, "natix_axon_serving", hotkey=h2) == 0
        assert metric(s, "natix_miner_uid", hotkey=h1) == 1 and metric(s, "natix_miner_uid", hotkey=h2) == -1


def test_shared_hits_count_whatever_order_the_answers_complete_in():
    import types

    def res(sha, cached):
        return types.SimpleNamespace(image_sha256=sha, cached=cached, fallback=False)

    ledger = SharedHits(max_images=2)
    ledger.observe("b", res("x", True))  # b joined a's computation and finished first
    ledger.observe("a", res("x", False))
    ledger.observe("a", res("x", True))  # a again: its own result
    ledger.observe("c", res("x", True))
    ledger.observe("a", types.SimpleNamespace(image_sha256="y", cached=False, fallback=True))  # fallbacks: not counted
    assert dict(ledger.counts) == {"b": 1, "c": 1}


def test_the_shipped_example_file_is_valid():
    entries = load_hotkeys(os.path.join(REPO_ROOT, "deploy", "hotkeys.example.yaml"), local=False)
    assert [(e.name, e.port, e.vault_path) for e in entries] == [
        ("hk1", 8091, None), ("hk2", 8092, None), ("hk3", 8093, "natix/miner-hk3")]


async def test_one_hotkey_from_wallet_files_and_one_from_vault(tmp_path, validator_wallet):
    """Each entry's own wallet: files for one, a real OpenBao's KV secret for the other (ops/secrets)."""
    from bittensor_wallet import Keypair

    from natix_miner.engine import Engine
    from tests.support.ops_support import start_bao

    bao = start_bao()
    try:
        mnemonic = Keypair.generate_mnemonic(12)
        bao.put("natix/hk-vaulted", {"mnemonic": mnemonic, "coldkey_ss58": Keypair.create_from_mnemonic(
            Keypair.generate_mnemonic(12)).ss58_address})
        files = _wallets(tmp_path, "m1")["m1"]
        prof = _profile(tmp_path)
        hk = _write(tmp_path / "hk.yaml", [
            {"name": "files", "wallet_name": "m1", "wallet_hotkey": "default", "port": 0},
            {"name": "vaulted", "wallet_name": "m2", "wallet_hotkey": "default", "port": 0,
             "vault_path": "natix/hk-vaulted"}])
        cfg = _cfg(tmp_path, hk, validator_wallet.hotkey.ss58_address, prof,
                   vault={"addr": bao.addr, "token": bao.root_token, "timeout_s": 3.0})
        group = MinerGroup(cfg, engine=Engine(prof))
        with MinerThread(cfg, runner=group):
            assert group.miners["files"].wallet.hotkey.ss58_address == files.hotkey.ss58_address
            assert group.miners["vaulted"].wallet.hotkey.ss58_address == \
                Keypair.create_from_mnemonic(mnemonic).ss58_address
            for m in group.miners.values():
                r = await _query(validator_wallet, m, ImageSynapse(image=_b64(7)))
                assert r.axon.status_code == 200
        assert not (tmp_path / "wallets" / "m2").exists()  # the Vault hotkey never touched the disk
    finally:
        bao.stop()


def test_the_mock_validator_queries_every_hotkey_of_one_process(two_hotkeys, validator_wallet, tmp_path):
    from natix_miner.validator.cli import main

    group, hooks = two_hotkeys
    wallet_dir = os.path.dirname(os.path.dirname(validator_wallet.hotkey_file.path))
    out = tmp_path / "report.json"
    images = _images(group.engine)
    assert main(["--miner-url", hooks.url, "--n", "3", "--json", str(out), "--no-progress",
                 "--wallet.name", validator_wallet.name, "--wallet.hotkey", validator_wallet.hotkey_str,
                 "--wallet.path", os.path.dirname(wallet_dir)]) == 0
    miners = {m["name"]: m for m in json.loads(out.read_text())["miners"]}
    assert {n: (m["hotkey"], m["address"]) for n, m in miners.items()} == {
        n: (m.wallet.hotkey.ss58_address, f"127.0.0.1:{m.port}") for n, m in group.miners.items()}
    assert all(m["answered"] == 3 and m["invalid"] == 0 for m in miners.values())
    # 3 challenges and the unscored warm-up probe, each sent to both hotkeys at once: each computed once
    assert _images(group.engine) - images == 4


@pytest.mark.slow
async def test_the_run_command_serves_every_hotkey_of_the_file(tmp_path, validator_wallet):
    """``neurons/miner.py --local --hotkeys FILE`` on the default profile, as an operator starts it."""
    import signal

    from natix_miner.validator.targets import targets_from_miner

    hk = _write(tmp_path / "hk.yaml", [{"name": n, "wallet_name": n, "wallet_hotkey": "default", "port": 0}
                                       for n in ("a", "b")])
    url = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "neurons", "miner.py"), "--local", "--hotkeys", hk,
                             "--axon.ip", "127.0.0.1", "--metrics.port", url.rsplit(":", 1)[1], "--axon.port", "1",
                             "--wallet.path", str(tmp_path / "wallets"),
                             "--blacklist.allowed_hotkeys", validator_wallet.hotkey.ss58_address],
                            env={**env, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO_ROOT)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            await asyncio.sleep(0.5)
        targets = targets_from_miner(url)
        assert sorted(t.name for t in targets) == ["a", "b"] and len({t.port for t in targets}) == 2
        d = loopback_dendrite(validator_wallet)
        try:
            answers = await asyncio.gather(*(d.forward(t.axon_info(), ImageSynapse(image=_b64(8)), timeout=9.0,
                                                       deserialize=False) for t in targets))
        finally:
            await d.aclose_session()
        assert [r.axon.status_code for r in answers] == [200, 200] and answers[0].prediction == answers[1].prediction
        text = requests.get(url + "/metrics", timeout=5).text
        assert "natix_cache_shared_hits_total" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "serving 2 hotkeys on one engine (profile demo-cpu): a " in out
    assert "--axon.port 1 is not used with --hotkeys: each entry of the file sets its own" in out


def test_the_mock_validator_says_when_a_miner_url_cannot_be_read(capsys):
    from natix_miner.validator.cli import main

    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["--miner-url", url, "--n", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --miner-url {url}: cannot read its /readyz") and "--metrics.port" in err[-1]


def test_bench_hotkeys_sums_the_memory_of_a_process_tree():
    """scripts/bench_hotkeys.py's reading (docs/scaling.md's figures): a process and its children, RSS and PSS."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_hotkeys", os.path.join(REPO_ROOT, "scripts", "bench_hotkeys.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the grandchild says it is up (its interpreter running, not a fresh fork) before its pid is read
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; print(1, flush=True); "
                               "time.sleep(30)'], stdout=subprocess.PIPE); c.stdout.readline(); "
                               "print(c.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        one = bench.memory([child])
        both = bench.memory([parent.pid])
        assert one["processes"] == 1 and both["processes"] == 2
        assert 0 < one["pss_mib"] <= one["rss_mib"] and both["rss_mib"] > one["rss_mib"] and both["pss_mib"] > one["pss_mib"]
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None:
            os.kill(child, 9)
