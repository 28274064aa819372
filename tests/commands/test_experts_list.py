"""`natix-miner experts list`: every family appears, and loadability is checked for real."""

import json
import subprocess
import sys

from natix_miner.commands import experts as cmd


def test_json_lists_every_family_with_loadability():
    out = subprocess.run([sys.executable, "-m", "natix_miner.cli", "experts", "list", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    # the registry as a fresh process sees it (tests in this process register extra families)
    fresh = subprocess.run([sys.executable, "-c", "from natix_miner.experts import FAMILIES; print(*FAMILIES)"],
                           capture_output=True, text=True, timeout=120).stdout.split()
    assert set(fresh) >= {"timm", "ocr", "ultralytics", "vllm"}
    assert {r["family"] for r in rows} == set(fresh)
    for r in rows:
        assert set(r) >= {"family", "model", "loadable"}
        assert isinstance(r["loadable"], bool)
        if not r["loadable"]:
            assert r["reason"]
    # the demo profile's experts ship with the install: they must load here
    demo = [r for r in rows if r["source"] == "profile:demo-cpu" or r["model"] == "package:efficientnet_lite0"]
    assert demo and all(r["loadable"] for r in demo)


def test_check_reports_the_real_reason(tmp_path):
    ok, reason = cmd.check("ultralytics", str(tmp_path / "missing" / "best.pt"))
    assert not ok and "does not exist" in reason
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    assert cmd.check("timm", str(weights)) == (True, "ok")
    ok, reason = cmd.check("no_such_family", None)
    assert not ok and "unknown family" in reason
