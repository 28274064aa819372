"""Operator experience (issue 15): the miner never claims to serve on a port it does not hold, fails fast
with one ``error:`` line and a distinct exit code, reads reference-miner env files, and reports its
status. The start-up failures run the real entry point (``neurons/miner.py``) in a subprocess; the
status line runs a real miner against the in-memory chain of tests/miner/test_chain.py.
"""

from tests.support.paths import REPO_ROOT
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request

import pytest

from natix_miner import envs
from natix_miner.config import MinerConfig
from natix_miner.miner import errors
from natix_miner.miner.args import build_config, build_parser, settings_table
from natix_miner.miner.local import MinerThread
from natix_miner.miner.neuron import _free_port
from natix_miner.protocol import ImageSynapse
from tests.support.reliability_support import query, valid, validators
from tests.miner.test_chain import LocalChain

ROOT = REPO_ROOT
ENTRY = os.path.join(ROOT, "neurons", "miner.py")


def _run(*argv: str, env: dict = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
    full.update(env or {})
    return subprocess.run([sys.executable, ENTRY, *argv], capture_output=True, text=True, env=full, timeout=timeout,
                          cwd=ROOT)


def _held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


# -- item 1: ports -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["axon", "metrics"])
def test_a_port_held_by_another_socket_exits_at_once_naming_it(which, tmp_path):
    holder, port = _held_port()
    with holder:
        ports = (["--axon.port", str(port), "--metrics.port", "0"] if which == "axon"
                 else ["--axon.port", "0", "--metrics.port", str(port)])
        t0 = time.monotonic()
        out = _run("--local", "--axon.ip", "127.0.0.1", *ports, env={"TMPDIR": str(tmp_path)})
        took = time.monotonic() - t0
    assert out.returncode == errors.PORT, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f":{port} " in last and f"--{which}.port" in last
    assert f"NATIX_{which.upper()}_PORT" in last
    assert "Traceback" not in out.stderr and "serving on" not in out.stderr + out.stdout
    assert took < 60  # before any model loads
    assert [p for p in os.listdir(tmp_path) if p.startswith("natix-")] == []  # the throw-away wallet is gone


def test_metrics_server_binds_loopback_unless_told(tmp_path, caplog):
    from natix_miner.ops.runtime import OpsHooks

    caplog.set_level("INFO", logger="natix_miner")
    for argv, host in (([], "127.0.0.1"), (["--metrics.host", "0.0.0.0"], "0.0.0.0")):
        cfg = build_config(["--local", "--metrics.port", "0", *argv], env={})
        hooks = OpsHooks(cfg).start_server()
        try:
            assert hooks.server._httpd.server_address[0] == host
            said = [r.getMessage() for r in caplog.records if "metrics and health bound to" in r.getMessage()]
            assert said[-1].startswith(f"metrics and health bound to {host}:{hooks.port} ")  # the real address
            with urllib.request.urlopen(f"http://127.0.0.1:{hooks.port}/healthz", timeout=5) as r:
                assert r.status == 200
        finally:
            hooks.stopped()


# -- item 3: settings ----------------------------------------------------------------------------
REFERENCE_ENV = """# the NATIX reference miner's miner.env
IMAGE_DETECTOR=ViT                    # Options: ViT
IMAGE_DETECTOR_CONFIG=ViT_roadwork.yaml
IMAGE_DETECTOR_DEVICE=cuda            # Options: cpu, cuda

NETUID=323                            # 72 mainnet, 323 testnet
SUBTENSOR_NETWORK=test
SUBTENSOR_CHAIN_ENDPOINT=wss://test.finney.opentensor.ai:443/

WALLET_NAME=cold
WALLET_HOTKEY="hot key"
MINER_AXON_PORT=28091
BLACKLIST_FORCE_VALIDATOR_PERMIT=True
export MODEL_URL='https://huggingface.co/acme/roadwork'
NATIX_PROFILE=h100x1
"""


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_reference_style_env_file_relative_to_the_caller(tmp_path, monkeypatch, newline):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "miner.env").write_bytes(REFERENCE_ENV.replace("\n", newline).encode())
    monkeypatch.chdir(tmp_path)
    cfg = build_config([], env={"NATIX_ENV_FILE": os.path.join("sub", "miner.env")})
    assert (cfg.chain.netuid, cfg.chain.network) == (323, "test")
    assert cfg.chain.chain_endpoint == "wss://test.finney.opentensor.ai:443/"
    assert (cfg.wallet.name, cfg.wallet.hotkey) == ("cold", "hot key")
    assert cfg.axon.port == 28091 and cfg.blacklist.force_validator_permit is True
    assert cfg.model_url == "https://huggingface.co/acme/roadwork" and cfg.profile.endswith("h100x1.yaml")
    warnings = envs.env_warnings(envs.with_env_file({"NATIX_ENV_FILE": "sub/miner.env"}))
    assert "WALLET_NAME (reference-miner name) read as NATIX_WALLET_NAME" in warnings
    assert any(w.startswith("IMAGE_DETECTOR=ViT") and "NATIX_PROFILE" in w for w in warnings)
    # the process environment beats the file; the NATIX_* name beats the reference alias
    cfg = build_config([], env={"NATIX_ENV_FILE": "sub/miner.env", "NATIX_AXON_PORT": "9999", "NETUID": "72"})
    assert cfg.axon.port == 9999 and cfg.chain.netuid == 72
    assert build_config([], env={"NETUID": "72", "NATIX_NETUID": "323", "NATIX_ALLOW_DEMO": "1"}).chain.netuid == 323


def test_unknown_natix_key_is_warned_with_the_nearest_name():
    warnings = envs.env_warnings({"NATIX_NETUD": "72", "NATIX_AXON_PROT": "1", "NATIX_NETUID": "72", "HOME": "/"})
    assert "unknown variable NATIX_NETUD ignored; did you mean NATIX_NETUID?" in warnings
    assert "unknown variable NATIX_AXON_PROT ignored; did you mean NATIX_AXON_PORT?" in warnings
    assert len(warnings) == 2


def test_every_flag_has_a_variable_and_help_shows_default_and_variable():
    text = build_parser().format_help()
    flags = [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    from natix_miner.miner.args import FLAGS

    table_keys = {k for _, k, _, _ in FLAGS}
    for action in flags:
        if action.dest in table_keys:
            assert "env: " in action.help and "default: " in action.help, action.option_strings
        elif action.dest not in ("logging.debug", "logging.trace") and action.help != argparse.SUPPRESS:
            # added beside the table: still a variable
            assert "NATIX_" in action.help, action.option_strings
    assert "[default: 8091; env: NATIX_AXON_PORT]" in " ".join(text.split())
    table = settings_table()
    assert "| `--metrics.host` | `NATIX_METRICS_HOST` | `127.0.0.1` |" in table
    declared = envs.declared()
    assert {"NATIX_AXON_EXTERNAL_IP", "NATIX_BLACKLIST_MIN_STAKE", "NATIX_LOCAL", "VAULT_TOKEN"} <= set(declared)
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert table in readme, "README's settings table is stale: python -m natix_miner.miner.args --readme"


def test_bool_flags_bare_and_bittensor_names():
    cfg = build_config(["--local", "--blacklist.force_validator_permit", "--logging.logging_dir", "/var/log/x"], env={})
    assert cfg.blacklist.force_validator_permit is True and cfg.logging.dir == "/var/log/x"
    cfg = build_config(["--local", "--blacklist.force_validator_permit", "false"], env={})
    assert cfg.blacklist.force_validator_permit is False


# -- item 2: start-up failures, each one line and its own exit code --------------------------------
@pytest.fixture(scope="module")
def wallet_dir(tmp_path_factory):
    from natix_miner.miner.wallet import ephemeral_wallet

    root = str(tmp_path_factory.mktemp("opwallet"))
    ephemeral_wallet("op", "hk", root)
    return root


CASES = {
    "unknown profile": (["--local", "--profile", "no-such"], {}, errors.CONFIG, ["no-such", "demo-cpu", "h100x2"]),
    "bad variable": (["--local"], {"NATIX_AXON_PORT": "80a91"}, errors.CONFIG, ["NATIX_AXON_PORT", "--axon.port"]),
    "bad network": (["--allow-demo", "--subtensor.network", "mainnet"], {}, errors.CONFIG, ["did you mean finney"]),
    "demo on chain": ([], {}, errors.CONFIG, ["--allow-demo", "gpu-small"]),
    "bad local metagraph": (["--local", "--local.metagraph", "/nonexistent/mg.yaml"], {}, errors.CONFIG,
                            ["--local.metagraph", "/nonexistent/mg.yaml"]),
    "missing env file": (["--local"], {"NATIX_ENV_FILE": "nope.env"}, errors.CONFIG, ["nope.env", "cp miner.env"]),
    "missing wallet": (["--allow-demo", "--wallet.path", "/nonexistent/w"], {}, errors.WALLET, ["hotkey file", "btcli"]),
    "chain down": (["--allow-demo", "--subtensor.chain_endpoint", "ws://127.0.0.1:9"], {"wallet": True},
                   errors.CHAIN, ["ws://127.0.0.1:9", "--subtensor.chain_endpoint"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_startup_failure_is_one_error_line_with_its_exit_code(case, wallet_dir):
    argv, env, code, needles = CASES[case]
    env = dict(env)
    if env.pop("wallet", False):
        argv = [*argv, "--wallet.path", wallet_dir, "--wallet.name", "op", "--wallet.hotkey", "hk"]
    out = _run(*argv, "--metrics.port", "0", env={"NATIX_ALLOW_INSECURE_PERMISSIONS": "1", **env})
    assert out.returncode == code, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last
    assert "Traceback" not in out.stderr


def test_logging_debug_keeps_the_traceback():
    out = _run("--local", "--profile", "no-such", "--logging.debug")
    assert out.returncode == errors.CONFIG and "Traceback" in out.stderr and "error: profile not found" in out.stderr


def _chain_cfg(**over) -> MinerConfig:
    data = {"local": False, "sync_interval_s": 0.3, "chain": {"netuid": 72},
            "axon": {"ip": "127.0.0.1", "port": _free_port(), "external_ip": "127.0.0.1"}, "metrics": {"enabled": False}}
    data.update(over)
    return MinerConfig.model_validate(data)


class RefusingChain(LocalChain):
    def serve_axon(self, netuid, axon):
        return types.SimpleNamespace(success=False, message="Custom error: 10 (RateLimited)")


@pytest.mark.parametrize("chain_cls, registered, code, needle", [
    (LocalChain, False, errors.REGISTRATION, "btcli subnet register"),
    (RefusingChain, True, errors.SERVE, "RateLimited"),
])
def test_chain_startup_failures_carry_their_code(miner_wallet, chain_cls, registered, code, needle):
    chain = chain_cls()
    if registered:
        chain.register(miner_wallet.hotkey.ss58_address)
    with pytest.raises(RuntimeError) as err:
        with MinerThread(_chain_cfg(), wallet=miner_wallet, subtensor=chain):
            pass
    cause = err.value.__cause__
    assert isinstance(cause, errors.StartupError) and cause.code == code and needle in str(cause)


# -- item 4: status line, gauges, per-request line, /readyz ---------------------------------------
class StatusChain(LocalChain):
    """The in-memory chain plus trust / incentive / emission and uids, as a real metagraph has."""

    def metagraph(self, netuid):
        import numpy as np

        mg = super().metagraph(netuid)
        n = len(mg.hotkeys)  # arrays, as bittensor's metagraph holds them
        mg.uids = np.arange(n)
        mg.S = np.asarray(mg.S, dtype=np.float32)
        mg.validator_permit = np.asarray(mg.validator_permit, dtype=bool)
        mg.T = np.array([0.5 + 0.01 * i for i in range(n)], dtype=np.float32)
        mg.I = np.array([0.001 * i for i in range(n)], dtype=np.float32)
        mg.E = np.array([0.1 * i for i in range(n)], dtype=np.float32)
        return mg


async def test_status_line_gauges_request_line_and_readyz(tmp_path, miner_wallet, jpeg_b64, caplog):
    from natix_miner.ops.runtime import OpsHooks

    (val, _), = validators(tmp_path, [5000])
    chain = StatusChain()
    chain.register(val.hotkey.ss58_address, stake=5000, permit=True)
    chain.register("5Other", stake=1, permit=False)
    chain.register(miner_wallet.hotkey.ss58_address, stake=12.5)  # uid 2
    cfg = _chain_cfg(metrics={"enabled": True, "port": 0})
    hooks = OpsHooks(cfg).start_server()
    caplog.set_level("INFO", logger="natix_miner")
    with MinerThread(cfg, wallet=miner_wallet, subtensor=chain, hooks=hooks) as m:
        r, _ = await query(val, m.info(), ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 200 and valid(r.prediction)
        seen = chain.syncs
        deadline = time.monotonic() + 20
        while chain.syncs < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(f"{hooks.url}/readyz", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["checks"]["axon"]["listening"] is True and body["checks"]["axon"]["ok"] is True
        metrics = urllib.request.urlopen(f"{hooks.url}/metrics", timeout=5).read().decode()
        sock = m.miner._axon_socket
    lines = [r.getMessage() for r in caplog.records]
    status = [ln for ln in lines if ln.startswith("status: uid 2 |")]
    assert status and "stake 12.5000" in status[0] and "trust 0.5200" in status[0] and "validators 1" in status[0]
    assert "emission 0.200000" in status[0] and "incentive 0.002000" in status[0]
    assert any(ln.startswith("status: uid 2") and "answers 1 in the last" in ln for ln in status), status
    assert any(ln.startswith("answered ImageSynapse from " + val.hotkey.ss58_address[:8]) and "p=" in ln
               and "tiers=" in ln and " ms (demo model)" in ln for ln in lines), lines[-20:]
    assert any("serving on 127.0.0.1:" in ln and "uid 2" in ln for ln in lines)
    hotkey = f'{{hotkey="{miner_wallet.hotkey.ss58_address}"}}'  # the status gauges carry the axon's hotkey
    values = {ln.split()[0].replace(hotkey, ""): float(ln.split()[1]) for ln in metrics.splitlines()
              if ln.startswith("natix_") and len(ln.split()) == 2}
    for name, want in (("natix_miner_uid", 2), ("natix_miner_stake", 12.5), ("natix_validators_seen", 1),
                       ("natix_miner_trust", 0.52), ("natix_miner_incentive", 0.002), ("natix_miner_emission", 0.2)):
        assert values[name] == pytest.approx(want, rel=1e-5), name
    assert sock.fileno() == -1  # the axon's own socket is closed with the miner
    assert not m.miner.listening()


# -- item 5: the minimum-hardware profile ----------------------------------------------------------
def test_gpu_small_profile_fits_the_documented_minimum(capsys):
    import yaml

    from natix_miner.cli import main

    assert main(["profile", "validate", "gpu-small"]) == 0
    assert main(["profile", "plan", "gpu-small", "--gpus", "1", "--gpu-gb", "4"]) == 0  # exit 1 when over budget
    assert main(["profile", "plan", "h100x1", "--gpus", "1", "--gpu-gb", "4"]) != 0  # the check can fail
    out = capsys.readouterr().out
    assert "natix_vit" in out
    from natix_miner.config import load_profile

    prof = load_profile("gpu-small")
    assert prof.expert("natix_vit").model == "natix-network-org/roadwork" and not prof.demo
    spec = yaml.safe_load(open(os.path.join(ROOT, "min_compute.yml")))["compute_spec"]["miner"]
    assert spec["profile"] == "configs/gpu-small.yaml" and spec["gpu"]["min_vram"] == 4
    assert "`gpu-small`" in open(os.path.join(ROOT, "README.md")).read()


def test_start_script_reads_a_crlf_reference_env_file_relative_to_the_caller(tmp_path):
    """deploy/start_miner.sh parses the file with python-dotenv (never sources it): CRLF, quotes, a
    relative NATIX_ENV_FILE from the caller's directory, reference names."""
    text = (REFERENCE_ENV + f"NATIX_PYTHON={sys.executable}\nNATIX_EXTRA_ARGS=\"--axon.external_ip 203.0.113.7\"\n"
            "NATIX_NETUD=72\nNATIX_METRICS_HOST=0.0.0.0\n")
    (tmp_path / "ref.env").write_bytes(text.replace("\n", "\r\n").encode())
    os.chmod(tmp_path / "ref.env", 0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATIX_")}
    env.update(NATIX_ENV_FILE="ref.env", NATIX_DRY_RUN="1")
    out = subprocess.run(["bash", os.path.join(ROOT, "deploy", "start_miner.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout.rsplit("command:", 1)[0])
    assert (cfg["wallet"]["name"], cfg["wallet"]["hotkey"], cfg["axon"]["port"]) == ("cold", "hot key", 28091)
    assert cfg["chain"]["netuid"] == 323 and cfg["axon"]["external_ip"] == "203.0.113.7"
    assert cfg["metrics"]["host"] == "0.0.0.0" and cfg["model_url"] == "https://huggingface.co/acme/roadwork"
    assert "did you mean NATIX_NETUID?" in out.stderr and "\r" not in out.stdout


def test_dashboard_shows_the_status_gauges():
    from natix_miner.ops.metrics import STATUS_GAUGES

    dash = json.load(open(os.path.join(ROOT, "deploy", "grafana-dashboard.json")))
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for _, metric, _ in STATUS_GAUGES:
        assert metric in exprs, metric


# -- item 6: the smaller ones ------------------------------------------------------------------------
def test_quiet_disables_every_progress_bar(monkeypatch, tmp_path):
    from tqdm import std
    from tqdm import tqdm
    from tqdm.auto import tqdm as auto_tqdm

    from natix_miner.cli import main

    monkeypatch.setattr(std.tqdm, "__init__", std.tqdm.__init__)  # restored after the test
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert tqdm(range(1)).disable is False
    main(["data", "validate", str(tmp_path / "none"), "--quiet"])
    assert tqdm(range(1)).disable is True and auto_tqdm(range(1)).disable is True
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TQDM_DISABLE"] == "True"


def test_mock_validator_against_a_stopped_miner_says_so_at_once(capsys):
    from natix_miner.validator.cli import main

    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    assert main([f"127.0.0.1:{port}:5FakeHotkey", "--n", "3", "--no-progress"]) == 1
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert f"error: miner at 127.0.0.1:{port} does not accept connections; is it running" in err


def test_data_pull_hints_the_installed_hf_command(monkeypatch, tmp_path):
    from natix_miner.training import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "resolve_token", lambda token=None: None)
    with pytest.raises(hub.DatasetError, match="`hf auth login`") as err:
        hub.download(tmp_path)
    assert "huggingface-cli" not in str(err.value)


def test_demo_profile_predictions_carry_the_caveat(tmp_path, capsys):
    import yaml

    from natix_miner.cli import main
    from tests.support.engine_experts import grey_png, register

    register()
    prof = {"name": "demo-ish", "demo": True, "experts": [{"name": "bright", "family": "engine_test_brightness"}],
            "tiers": [{"name": "fast", "experts": ["bright"]}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    (tmp_path / "g.png").write_bytes(grey_png(200))
    assert main(["predict", str(tmp_path / "g.png"), "--profile", str(tmp_path / "p.yaml"), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["caveat"].startswith("demo model")
    prof["demo"] = False
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    assert main(["predict", str(tmp_path / "g.png"), "--profile", str(tmp_path / "p.yaml"), "--json"]) == 0
    assert "caveat" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_insecure_key_file_exits_with_the_permissions_code(tmp_path):
    from natix_miner.miner.wallet import ephemeral_wallet

    w = ephemeral_wallet("loose", "hk", str(tmp_path / "w"))
    os.chmod(w.hotkey_file.path, 0o644)
    out = _run("--local", "--wallet.path", str(tmp_path / "w"), "--wallet.name", "loose", "--wallet.hotkey", "hk",
               "--metrics.port", "0")
    assert out.returncode == errors.PERMISSIONS, out.stderr[-2000:]
    assert "error: refusing to start with insecure file permissions" in out.stderr and "Traceback" not in out.stderr


def test_local_mode_status_line_and_gauges_from_the_local_metagraph(tmp_path, miner_wallet, caplog):
    from natix_miner.engine import Engine
    from natix_miner.ops.runtime import OpsHooks
    from tests.support.engine_experts import make_profile

    mg = tmp_path / "mg.yaml"
    mg.write_text(f"- {{hotkey: 5Val, stake: 900, validator_permit: true}}\n"
                  f"- {{hotkey: {miner_wallet.hotkey.ss58_address}, stake: 3.5, validator_permit: false}}\n")
    os.chmod(mg, 0o600)
    prof = make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["b"]}])
    cfg = MinerConfig.model_validate({"local": True, "local_metagraph": str(mg), "axon": {"ip": "127.0.0.1", "port": 0},
                                      "metrics": {"enabled": True, "port": 0}, "profile": prof.path})
    hooks = OpsHooks(cfg).start_server()
    caplog.set_level("INFO", logger="natix_miner")
    with MinerThread(cfg, engine=Engine(prof), wallet=miner_wallet, hooks=hooks):
        metrics = urllib.request.urlopen(f"{hooks.url}/metrics", timeout=5).read().decode()
    assert any(r.getMessage().startswith("status: uid 1 | stake 3.5000 | trust 0.0000") and "validators 1" in
               r.getMessage() for r in caplog.records)
    hotkey = f'{{hotkey="{miner_wallet.hotkey.ss58_address}"}}'
    assert f"natix_miner_uid{hotkey} 1.0" in metrics and f"natix_miner_stake{hotkey} 3.5" in metrics


def test_a_profile_the_engine_cannot_load_is_the_models_code(tmp_path, miner_wallet):
    from tests.support.engine_experts import make_profile

    prof = make_profile(tmp_path, experts=[{"name": "x", "family": "no_such_family"}],
                        tiers=[{"name": "t", "experts": ["x"]}])
    cfg = MinerConfig.model_validate({"local": True, "axon": {"ip": "127.0.0.1", "port": 0},
                                      "metrics": {"enabled": False}, "profile": prof.path})
    with pytest.raises(RuntimeError) as err:
        with MinerThread(cfg, wallet=miner_wallet):
            pass
    cause = err.value.__cause__
    assert isinstance(cause, errors.StartupError) and cause.code == errors.MODELS
    assert "no_such_family" in str(cause) and "natix-miner profile validate" in str(cause)


def test_no_public_ip_is_the_serve_code_naming_the_flag(miner_wallet, monkeypatch):
    from bittensor.utils import networking

    def no_ip():
        raise networking.ExternalIPNotFound("no service answered")

    monkeypatch.setattr(networking, "get_external_ip", no_ip)
    chain = LocalChain()
    chain.register(miner_wallet.hotkey.ss58_address)
    cfg = _chain_cfg(axon={"ip": "127.0.0.1", "port": _free_port()})  # no external_ip: looked up
    with pytest.raises(RuntimeError) as err:
        with MinerThread(cfg, wallet=miner_wallet, subtensor=chain):
            pass
    cause = err.value.__cause__
    assert isinstance(cause, errors.StartupError) and cause.code == errors.SERVE
    assert "--axon.external_ip" in str(cause) and chain.served == []


def test_every_natix_variable_the_repo_uses_is_declared():
    """No false "unknown variable" warnings: each NATIX_* name in the code, scripts and docs is declared."""
    import re

    used = set()
    for top in ("natix_miner", "scripts", "deploy", "docs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith((".py", ".sh", ".md", ".yml", ".yaml", ".js", ".example")):
                    used |= set(re.findall(r"NATIX_[A-Z0-9_]*[A-Z0-9]", open(os.path.join(dirpath, f), errors="replace").read()))
    for f in ("README.md", "miner.env.example", "ecosystem.config.js", "Dockerfile.miner"):
        if os.path.exists(os.path.join(ROOT, f)):
            used |= set(re.findall(r"NATIX_[A-Z0-9_]*[A-Z0-9]", open(os.path.join(ROOT, f)).read()))
    used -= {"NATIX_NETUD"}  # the typo the docs show as an example of the warning
    assert sorted(used - set(envs.declared())) == []


def test_the_reference_start_command_is_accepted():
    """natixnetwork/streetvision-subnet's start_miner.sh flags parse; the detector ones are reported as unused."""
    from natix_miner.miner.args import ignored_flags

    argv = ["--neuron.image_detector", "ViT", "--neuron.image_detector_config", "ViT_roadwork.yaml",
            "--neuron.image_detector_device", "cuda", "--netuid", "323", "--model_url", "https://hf.co/a/b",
            "--subtensor.network", "test", "--subtensor.chain_endpoint", "wss://test.finney.opentensor.ai:443/",
            "--wallet.name", "w", "--wallet.hotkey", "h", "--axon.port", "8091",
            "--blacklist.force_validator_permit", "True", "--logging.debug", "--profile", "gpu-small"]
    ns = build_parser().parse_args(argv)
    cfg = build_config(namespace=ns, env={})
    assert cfg.chain.netuid == 323 and cfg.logging.level == "DEBUG" and cfg.blacklist.force_validator_permit
    warned = ignored_flags(ns)
    assert len(warned) == 3 and warned[0].startswith("--neuron.image_detector ViT (reference-miner flag) is not used")


@pytest.mark.slow
def test_gpu_small_loads_every_expert_and_its_hints_cover_the_weights(tmp_path):
    """Every expert of gpu-small loads from tiny stand-ins (real families and options) and answers; each
    GPU expert's memory hint covers its float16 weights at the real size (published parameter counts)."""
    from natix_miner.config import load_profile
    from natix_miner.standins.build import arch_for, build_model, build_profile, n_params
    from tests.standins.test_standins import run_all_tiers

    prof = load_profile("gpu-small", stand_ins=False, device=False)
    for spec in prof.experts:
        if spec.device.startswith("cuda"):
            _, rec = arch_for(spec)
            counted_m = n_params(build_model(spec, "full", device="meta")) / 1e6  # the real architecture
            assert abs(counted_m / rec["params_m"] - 1) < 0.05, (spec.name, counted_m)
            weights_gb = counted_m * 1e6 * 2 / 2**30  # float16
            assert spec.memory_gb >= 1.25 * weights_gb, (spec.name, spec.memory_gb, weights_gb)
    build_profile(prof, "tiny", tmp_path / "si")
    status, errs, res = run_all_tiers(load_profile("gpu-small", stand_ins=str(tmp_path / "si"), device="cpu"))
    assert errs == {} and set(status.values()) == {"loaded"}, errs
    assert res.tiers_run == ["fast", "evidence"] and sorted(res.evidence) == sorted(e.name for e in prof.experts)
    assert not res.fallback and 0.0 <= res.probability <= 1.0
