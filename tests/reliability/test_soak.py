"""The soak benchmark, shortened for CI: a real miner process under open-loop load from loopback
dendrites (valid, repeated and hostile images, faults in tier 1). Every request gets a valid answer
within its timeout, memory does not climb, and the report has every field the docs promise.
The full-length run is ``python scripts/soak.py --seconds 600`` (docs/reliability.md)."""

from tests.support.paths import REPO_ROOT
import json
import os
import subprocess
import sys

ROOT = REPO_ROOT


def test_short_soak_passes(tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "soak.py"), "--seconds", "8", "--rate", "10",
           "--validators", "5", "--hostile", "0.2", "--fault", "raise", "--fault-rate", "0.5",
           "--max-inflight", "8", "--max-waiting", "16", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["ok"] and "PASS" in proc.stdout
    assert r["sent"] >= 40 and r["completed"] == r["sent"] == r["valid_answers"]
    assert r["invalid"] == r["late"] == r["http_error"] == 0
    assert r["outcomes"].get("answered", 0) > 0
    assert r["fallback_reasons"].get("bad_image", 0) > 0  # hostile images answered with the fallback
    assert r["engine"]["breakers"]["chaotic"]["errors"] > 0  # faults were injected...
    assert r["latency_s"]["p99"] < r["config"]["timeout"]  # ...and never cost an answer or the deadline
    assert r["admission"]["peak_inflight"] <= 8 and r["admission"]["peak_waiting"] <= 16
    assert 0 < r["rss"]["peak_mb"] < 4096
    assert r["rss"]["growth_mb"] < 150
