"""Reliability round two (issue 19, items 5-8, 11, 12 and breaker recovery): bounded decoding,
isolated children that cannot block the parent, finite fitted consensus, readiness that tells the
truth, a breaker that lets an idle miner recover at once, no core dumps, logs that never hurt
answers. Real components only: real JPEG files, real child processes, real files and loguru sinks.
"""

import asyncio
import json
import math
import os
import subprocess
import sys
import time

import pytest

from natix_miner.config import ProfileError, load_profile
from natix_miner.engine import Engine
from tests.engine_experts import grey_png, make_profile, noise_jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIGHT = {"name": "fast", "family": "engine_test_brightness", "device": "cpu"}
TIERS = [{"name": "t0", "experts": ["fast"], "budget_s": 2.0}]


# -- 7: non-finite fitted consensus ----------------------------------------------------------------

@pytest.mark.parametrize("fitted,key", [
    ({"weights": {"fast": float("nan")}, "bias": 0.0}, "weights.fast"),
    ({"weights": {"fast": 1.0}, "bias": float("inf")}, "bias"),
    ({"weights": {"fast": 1.0}, "isotonic": {"x": [0.0, float("nan")], "y": [0.1, 0.9]}}, "isotonic.x.1"),
    ({"weights": {"fast": 1.0}, "stages": {"t0": {"weights": {"fast": 1.0}, "temperature": float("inf")}}},
     "stages.t0.temperature"),
])
def test_non_finite_consensus_file_is_refused_naming_file_and_key(tmp_path, fitted, key):
    with pytest.raises(ProfileError) as err:
        make_profile(tmp_path, experts=[BRIGHT], tiers=TIERS, consensus_json=fitted)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert "test.consensus.json" in msg and f": {key}:" in msg and "finite" in msg, msg
    # the same through `natix-miner profile validate`: exit 1, the file and key on stderr, no traceback
    r = subprocess.run([sys.executable, "-m", "natix_miner.cli", "profile", "validate", str(tmp_path / "test.yaml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "test.consensus.json" in r.stderr and key in r.stderr, r.stderr


def test_non_finite_band_in_the_profile_is_refused(tmp_path):
    with pytest.raises(ProfileError) as err:
        make_profile(tmp_path, experts=[BRIGHT], tiers=TIERS, escalation={"low": float("nan"), "high": 0.8})
    assert "escalation.low" in str(err.value)


async def test_engine_start_refuses_a_profile_made_non_finite_after_loading(tmp_path):
    prof = make_profile(tmp_path, experts=[BRIGHT], tiers=TIERS, consensus_json={"weights": {"fast": 1.0}})
    prof.consensus.weights["fast"] = float("nan")  # a profile changed in code after validation
    prof.consensus.stages["t0"] = prof.consensus.model_copy()
    prof.consensus.stages["t0"].bias = float("-inf")
    engine = Engine(prof)
    with pytest.raises(ProfileError) as err:
        await engine.start()
    msg = str(err.value)
    assert "test.consensus.json: weights.fast: " in msg and "stages.t0.bias" in msg, msg
    assert not engine.ready
