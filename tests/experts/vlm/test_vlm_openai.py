"""The ``openai_vlm`` family against a real OpenAI-compatible HTTP server on loopback.

The server (natix_miner.experts.vlm.hf_server) runs the tiny Qwen2-VL through transformers and returns
real logprobs, with vLLM's request extensions (``logprob_token_ids``, ``continue_final_message``, ...),
so the remote expert's P(yes) must equal the in-process transformers expert's for the same image.
"""

import asyncio
import contextlib

import pytest

from natix_miner.experts import create_expert
from natix_miner.experts.vlm.openai_backend import ServerError
from natix_miner.experts.vlm.prompt import VLMOptionError
from tests.support.vlm_support import jpeg_image, png_image, spec, tiny_vlm

API_KEY = "test-key-123"


@pytest.fixture(scope="module")
def local_expert():
    e = create_expert(spec("hf_vlm", tiny_vlm("qwen2_vl"), name="local",
                           thinking={"mode": "always", "max_tokens": 5}))
    e.load("cpu")
    return e


@contextlib.asynccontextmanager
async def serving(expert, api_key=None, trust_mm=False):
    from aiohttp import web

    from natix_miner.experts.vlm.hf_server import create_app

    runner = web.AppRunner(create_app(expert, "tiny-qwen", api_key=api_key, trust_request_mm_kwargs=trust_mm))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def remote(url, name="remote", model="tiny-qwen", **options):
    server = {"base_url": url, "timeout_s": 60, **options.pop("server", {})}
    e = create_expert(spec("openai_vlm", model, name=name, server=server, **options))
    e.load("cpu")
    return e


def test_remote_equals_local(local_expert, monkeypatch):
    monkeypatch.setenv("NATIX_TEST_VLM_KEY", API_KEY)
    images = [jpeg_image(0), png_image(1)]
    want = local_expert.predict_batch(images)

    async def run():
        async with serving(local_expert, api_key=API_KEY) as url:
            e = remote(url, server={"api_key_env": "NATIX_TEST_VLM_KEY"},
                       thinking={"mode": "always", "max_tokens": 5, "timeout_s": 60})
            await e.start_async()
            try:
                first = await e.predict_batch_async(images)
                again = await e.predict_batch_async(images[:1])
            finally:
                await e.close_async()
            return e, first, again

    e, got, again = asyncio.run(run())
    assert sorted(e.answers.ids()) == sorted(local_expert.answers.ids())  # ids from /tokenize
    for w, g in zip(want, got):
        assert g.detail["p_direct"] == pytest.approx(w.detail["p_direct"], abs=1e-4)
        assert g.detail["thinking"]["p"] == pytest.approx(w.detail["thinking"]["p"], abs=1e-4)
        assert g.detail["thinking"]["tokens"] == w.detail["thinking"]["tokens"]
        assert 0 < g.probability < 1
    assert again[0].probability == got[0].probability


def test_api_key_required(local_expert, monkeypatch):
    monkeypatch.setenv("NATIX_TEST_VLM_KEY", "wrong-key")

    async def run():
        async with serving(local_expert, api_key=API_KEY) as url:
            out = []
            for e in (remote(url), remote(url, server={"api_key_env": "NATIX_TEST_VLM_KEY"})):
                with pytest.raises(ServerError, match="HTTP 401"):
                    await e.start_async()
                out.append(e.session)  # closed on failure
            return out

    assert asyncio.run(run()) == [None, None]
    monkeypatch.delenv("NATIX_TEST_VLM_KEY")
    with pytest.raises(VLMOptionError, match="NATIX_TEST_VLM_KEY"):
        remote("http://127.0.0.1:9/v1", server={"api_key_env": "NATIX_TEST_VLM_KEY"})


def test_model_name_and_tokens_checked(local_expert):
    async def run():
        async with serving(local_expert) as url:
            out = []
            for e in (remote(url, model="no-such-model"), remote(url, yes_words=["roadworkish"])):
                try:
                    await e.start_async()
                    out.append(None)
                except (ServerError, VLMOptionError) as exc:
                    out.append(exc)
            return out

    missing, multi = asyncio.run(run())
    assert isinstance(missing, ServerError) and "not served" in str(missing)
    assert isinstance(multi, VLMOptionError) and "single-token" in str(multi)


def test_plain_openai_server_mode(local_expert):
    """Without vLLM's extensions the expert classifies top_logprobs by text; a random model may rank no
    answer word in its top 20, and then the expert abstains instead of inventing a number."""
    async def run():
        async with serving(local_expert) as url:
            e = remote(url, server={"vllm_extensions": False, "top_logprobs": 20})
            await e.start_async()
            try:
                return await e.predict_batch_async([jpeg_image(0), png_image(1)])
            finally:
                await e.close_async()

    for ev in asyncio.run(run()):
        if ev.abstain:
            assert ev.detail["answer_mass"] == 0.0
        else:
            assert 0 < ev.probability < 1 and ev.detail["logprobs"]


def test_per_request_pixel_budget(local_expert):
    """Per-request max_pixels only reach a server that trusts them (vLLM: --trust-request-mm-kwargs);
    a smaller budget means fewer visual tokens, so a different answer."""
    async def run(trust):
        async with serving(local_expert, trust_mm=trust) as url:
            e = remote(url, max_pixels=112 * 112, server={"send_mm_processor_kwargs": True})
            await e.start_async()
            try:
                return await e.predict_batch_async([jpeg_image(0)])
            except ServerError as exc:
                return exc
            finally:
                await e.close_async()

    refused = asyncio.run(run(False))
    assert isinstance(refused, ServerError) and "trust-request-mm-kwargs" in str(refused)
    [small] = asyncio.run(run(True))
    [full] = local_expert.predict_batch([jpeg_image(0)])
    assert 0 < small.detail["p_direct"] < 1 and small.detail["p_direct"] != pytest.approx(full.detail["p_direct"])
