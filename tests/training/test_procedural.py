"""Issue 7's CI check: a small model trained for a few minutes on procedural scenes, scored on a
held-out procedural set under the validator's augmentation, per level, through the real engine.

This is the slowest test in the suite (about 7 minutes on 2 idle CPU cores): it runs
`scripts/train_procedural.py` as a user would and reads its report. The figures are printed (run
pytest with -s to see them) and the report is kept under the test's tmp dir.
"""

from tests.support.paths import REPO_ROOT
import json
import os
import subprocess
import sys

ROOT = REPO_ROOT


def test_small_model_learns_procedural_roadwork_per_level(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train_procedural.py"), "--out", str(out),
           "--train", "640", "--val", "160", "--test", "160", "--long-side", "320", "--epochs", "3", "--lr", "5e-4",
           "--seed", "0"]
    # run it as a user would: without the OMP_NUM_THREADS=1 that importing ultralytics (in an earlier
    # test of this pytest process) leaves in os.environ; one thread gives other numbers (measured:
    # L0 0.770 and a calibrated threshold of 0.285 with it, on the same seed)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    per_level = {int(k): v for k, v in report["test_mcc_per_level"].items()}
    print(f"\nprocedural held-out MCC per level: {per_level}; overall {report['test_overall']['mcc']:.3f}; "
          f"train {report['seconds']['train']:.0f}s")
    assert set(per_level) == {0, 1, 2, 3}
    # it learned: well above chance at every level the validator sends, strongest at level 0
    # (measured 2026-12-05 on 2 cores: L0 0.879, L1 0.820, L2 0.864, L3 0.682 on 160 held-out scenes,
    # calibrated threshold 0.50; lr 1e-3 with 96 validation scenes was unstable across hosts: L0 0.829 on
    # one, 0.635 on another with the same seeds; docs/training.md; bounds leave room)
    assert per_level[0] >= 0.65, per_level
    assert min(per_level.values()) >= 0.4, per_level
    # calibration put the MCC-best threshold near the validator's fixed 0.5
    before, after = report["test_before_calibration"], report["test_overall"]
    assert abs(after["best_threshold"] - 0.5) <= 0.2, (before["best_threshold"], after["best_threshold"])
    for name in ("best.pth", "procedural.yaml", "procedural.consensus.json"):
        assert (out / name).exists(), name
