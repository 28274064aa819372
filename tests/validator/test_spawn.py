"""The quick-start flow end to end: the script spawns a real local-mode miner on the embedded
default profile (a subprocess), queries it, reports, and stops it."""

from tests.support.paths import REPO_ROOT
import json
import os
import subprocess
import sys

import pytest

from natix_miner.validator.targets import MinerStartError, SpawnedMiner, port_open

ROOT = REPO_ROOT


def test_spawn_miner_run_reports_and_cleans_up(tmp_path):
    out = tmp_path / "out.json"
    plot = tmp_path / "out.png"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "mock_validator.py"), "--spawn-miner", "--n", "6",
         "--json", str(out), "--plot", str(plot), "--no-progress", "--seed", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    for key in ("n", "answered", "timeouts", "invalid", "mcc", "accuracy", "reward_mean", "ema", "latency_ms"):
        assert key in rep
    assert rep["n"] == 6 and rep["answered"] == 6 and rep["invalid"] == 0 and rep["timeouts"] == 0
    assert set(rep["latency_ms"]) >= {"p50", "p95", "p99"} and rep["latency_ms"]["p50"] > 0
    assert rep["miners"][0]["name"] == "demo-cpu"
    assert "demo-cpu" in proc.stdout and "level 0" in proc.stdout and plot.stat().st_size > 10_000
    assert not port_open("127.0.0.1", int(rep["miners"][0]["address"].rsplit(":", 1)[1]))


def test_a_miner_that_cannot_start_fails_clearly(validator_wallet, tmp_path):
    m = SpawnedMiner(validator_wallet.hotkey.ss58_address, profile=str(tmp_path / "no-such-profile.yaml"),
                     start_timeout=120)
    with pytest.raises(MinerStartError, match="exited"):
        m.start()
    assert m.proc.poll() is not None
