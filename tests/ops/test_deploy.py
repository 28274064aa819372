"""Deployment files: the pm2 start script, ecosystem.config.js, min_compute.yml, alert rules and the
Grafana dashboard (every metric they use must exist in what the miner exports)."""

from tests.support.paths import REPO_ROOT
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.ops_support import write_profile

ROOT = REPO_ROOT


def _exported_metric_names() -> set:
    """Every series name the miner's /metrics can carry (histogram/counter suffixes included)."""
    from prometheus_client.parser import text_string_to_metric_families

    from natix_miner.ops.metrics import MinerMetrics

    import types

    from natix_miner.miner.admission import Admission

    m = MinerMetrics()
    m.vault_probe = lambda: {"ok": True}
    m.miner = types.SimpleNamespace(admission=Admission(4, 8), engine=None, serving=False)
    body, _ = m.render()
    names = set()
    for fam in text_string_to_metric_families(body.decode()):
        names.add(fam.name)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + s for s in ("_bucket", "_count", "_sum"))
        names.update(s.name for s in fam.samples)
    return names


def _names_in(expr: str) -> set:
    return set(re.findall(r"\b((?:natix|process)_[a-z0-9_]+)", expr))


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def test_alert_rules_use_real_metrics():
    rules = yaml.safe_load(open(os.path.join(ROOT, "deploy", "alerts.yml")))["groups"][0]["rules"]
    exported = _exported_metric_names()
    wanted = {"NatixLatencyHigh", "NatixFallbackRateHigh", "NatixBreakerOpen", "NatixNoValidatorTraffic"}
    assert wanted <= {r["alert"] for r in rules}
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert _balanced(r["expr"]), r["alert"]
        unknown = _names_in(r["expr"]) - exported
        assert not unknown, f"{r['alert']} uses metrics the miner does not export: {unknown}"


def test_grafana_dashboard_uses_real_metrics():
    dash = json.load(open(os.path.join(ROOT, "deploy", "grafana-dashboard.json")))
    exported = _exported_metric_names()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for e in exprs:
        assert _balanced(e), e
        unknown = _names_in(e) - exported
        assert not unknown, f"dashboard query uses unknown metrics {unknown}: {e}"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
    used = set().union(*(_names_in(e) for e in exprs))
    for must in ("natix_requests_total", "natix_request_duration_seconds_bucket", "natix_tier_duration_seconds_bucket",
                 "natix_expert_duration_seconds_bucket", "natix_cascade_requests_total", "natix_cache_lookups_total",
                 "natix_breaker_state", "natix_gpu_memory_bytes", "natix_expert_load_status"):
        assert must in used, must


def test_min_compute_profiles_match_the_spec():
    spec = yaml.safe_load(open(os.path.join(ROOT, "min_compute.yml")))["compute_spec"]
    low, ref = spec["miner"], spec["miner_reference"]
    # the reference miner's floor (spec section 5): 4 GB VRAM (8 recommended), 8 GB RAM, 2 cores
    assert (low["gpu"]["min_vram"], low["gpu"]["recommended_vram"]) == (4, 8)
    assert low["memory"]["min_ram"] == 8 and low["cpu"]["min_cores"] == 2
    # the reference deployment: two 80 GB H100s
    assert ref["gpu"]["count"] == 2 and ref["gpu"]["min_vram"] >= 80
    assert "H100" in ref["gpu"]["recommended_gpu"]
    assert os.path.exists(os.path.join(ROOT, ref["profile"]))


def _env_file(tmp_path, mode=0o600, **over) -> str:
    text = open(os.path.join(ROOT, "miner.env.example")).read()
    for k, v in over.items():
        text = re.sub(rf"^#?{k}=.*$", f"{k}={v}", text, flags=re.M)
    p = tmp_path / "miner.env"
    p.write_text(text)
    os.chmod(p, mode)
    return str(p)


def _start(env_file: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NATIX_ENV_FILE=env_file, NATIX_DRY_RUN="1")
    env.pop("NATIX_PYTHON", None)
    return subprocess.run(["bash", os.path.join(ROOT, "deploy", "start_miner.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_start_script_resolves_miner_env(tmp_path):
    import sys

    prof = write_profile(tmp_path / "p.yaml", [("a", "timm", {})], [("t", ["a"], 1.0)])
    env_file = _env_file(tmp_path, NATIX_PROFILE=prof, NATIX_NETUID="323", NATIX_NETWORK="test",
                         VAULT_ADDR="http://127.0.0.1:8200", NATIX_VAULT_PATH="natix/hk",
                         VAULT_TOKEN="s.SuperSecretTokenValue1234567", NATIX_PYTHON=sys.executable,
                         NATIX_EXTRA_ARGS='"--axon.external_ip 203.0.113.10 --blacklist.min_stake 1000"')
    out = _start(env_file, "--logging.debug")
    assert out.returncode == 0, out.stderr
    text, cmd = out.stdout.rsplit("command:", 1)
    cfg = json.loads(text)
    assert cfg["chain"] == {"netuid": 323, "network": "test", "chain_endpoint": None}
    assert cfg["vault"]["path"] == "natix/hk" and cfg["vault"]["token"] == "***"
    assert cfg["axon"]["external_ip"] == "203.0.113.10" and cfg["blacklist"]["min_stake"] == 1000.0
    assert cfg["logging"]["level"] == "DEBUG" and cfg["metrics"]["port"] == 9100
    assert "neurons/miner.py --axon.external_ip 203.0.113.10 --blacklist.min_stake 1000 --logging.debug" in cmd
    assert "SuperSecret" not in out.stdout + out.stderr
    assert "readable by others" not in out.stderr


def test_start_script_refuses_clearly(tmp_path):
    import sys

    missing = _start(str(tmp_path / "nope.env"))
    assert missing.returncode == 2 and "cp miner.env.example miner.env" in missing.stderr
    loose = _env_file(tmp_path, mode=0o644, NATIX_PYTHON=sys.executable,
                      NATIX_PROFILE=write_profile(tmp_path / "p.yaml", [("a", "timm", {})], [("t", ["a"], 1.0)]))
    out = _start(loose)
    assert out.returncode == 0 and "chmod 600" in out.stderr
    nopy = _env_file(tmp_path, NATIX_PYTHON=str(tmp_path / "no-python"))
    out = _start(nopy)
    assert out.returncode == 2 and "scripts/setup.sh" in out.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (pm2's runtime) to evaluate ecosystem.config.js")
def test_ecosystem_config_runs_the_start_script():
    out = subprocess.run(["node", "-e", "process.stdout.write(JSON.stringify(require('./ecosystem.config.js')))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [app] = json.loads(out.stdout)["apps"]
    assert app["script"] == os.path.join(ROOT, "deploy", "start_miner.sh") and app["interpreter"] == "bash"
    assert app["cwd"] == ROOT and app["autorestart"] is True and app["kill_timeout"] >= 10000
    assert app["env"]["NATIX_ENV_FILE"] == os.path.join(ROOT, "miner.env")
