"""A small OpenAI-compatible server for a vision-language model, on the transformers backend.

For CPU boxes and small deployments that want the VLM in its own process (or on another host) without
vLLM, and for testing the ``openai_vlm`` family against a real model over real HTTP. It speaks the
subset the ``openai_vlm`` family uses, with vLLM's semantics:

* ``GET /v1/models``, ``GET /health``;
* ``POST /tokenize`` (``{"prompt", "add_special_tokens"}`` -> ``{"tokens", "count"}``);
* ``POST /v1/chat/completions`` with ``image_url`` parts as ``data:`` URLs (no remote URLs: no
  network), greedy decoding, ``max_tokens``, ``stop``, ``logprobs`` / ``top_logprobs`` (<= 20), and
  vLLM's extensions ``logprob_token_ids``, ``return_tokens_as_token_ids``, ``continue_final_message``,
  ``add_generation_prompt``, ``chat_template_kwargs``, ``mm_processor_kwargs`` (``max_pixels`` /
  ``min_pixels``; refused unless started with ``--trust-request-mm-kwargs``, as vLLM does).

One request runs at a time (a single model thread); sampling (``temperature > 0``) is refused.

Usage::

    python -m natix_miner.experts.vlm.hf_server --model /path/to/qwen-vl --port 8000 [--name qwen-vl]

    app = create_app(expert, "qwen-vl")        # expert: a loaded HFVisionLanguageExpert
    runner = web.AppRunner(app); await runner.setup(); await web.TCPSite(runner, "127.0.0.1", 0).start()
"""

import argparse
import asyncio
import concurrent.futures
import os
import time
import typing
import uuid

from natix_miner.imaging.decode import ImageError, b64decode_strict, decode_bytes


class BadRequest(ValueError):
    pass


def _images_and_messages(messages: list) -> typing.Tuple[list, list]:
    """Data-URL images out of OpenAI messages; their parts become ``{"type": "image"}``."""
    pils, out = [], []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise BadRequest("each message needs a role")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    if not url.startswith("data:"):
                        raise BadRequest("only data: URLs are accepted for images")
                    try:
                        pils.append(decode_bytes(b64decode_strict(url), eager=True).pil())
                    except ImageError as exc:
                        raise BadRequest(f"bad image: {exc}") from None
                    parts.append({"type": "image"})
                elif kind == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                else:
                    raise BadRequest(f"unsupported content part {kind!r}")
            content = parts
        out.append({"role": m["role"], "content": content if content is not None else ""})
    return pils, out


class ChatModel:
    """Greedy chat completion with per-step logprobs over a loaded ``HFVisionLanguageExpert``."""

    def __init__(self, expert, trust_request_mm_kwargs: bool = False):
        self.expert = expert
        self.trust_mm = trust_request_mm_kwargs
        self.processor = expert.processor
        self.tok = expert.tokenizer
        self.model = expert.model

    def _token(self, tid: int) -> str:
        return self.tok.decode([tid])

    def complete(self, body: dict) -> dict:
        import torch

        if float(body.get("temperature") or 0.0) > 0:
            raise BadRequest("this server decodes greedily: temperature must be 0")
        top = int(body.get("top_logprobs") or 0)
        if top > 20:
            raise BadRequest("top_logprobs must be <= 20")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        pils, messages = _images_and_messages(body.get("messages") or [])
        cont = bool(body.get("continue_final_message", False))
        text = self.processor.apply_chat_template(
            messages, tokenize=False, continue_final_message=cont,
            add_generation_prompt=bool(body.get("add_generation_prompt", not cont)),
            **(body.get("chat_template_kwargs") or {}))
        kwargs = {}
        mm = body.get("mm_processor_kwargs") or {}
        if mm and not self.trust_mm:
            raise BadRequest("Per-request mm_processor_kwargs are disabled; start the server with "
                             "--trust-request-mm-kwargs only when clients are trusted.")
        if mm:
            size = {k: v for k, v in dict(self.processor.image_processor.size).items() if v is not None}
            if mm.get("max_pixels"):
                size["longest_edge"] = int(mm["max_pixels"])
            if mm.get("min_pixels"):
                size["shortest_edge"] = int(mm["min_pixels"])
            kwargs["size"] = size
        inputs = self.processor(text=[text], images=pils or None, return_tensors="pt", **kwargs).to(self.expert.device)
        n_prompt = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True, pad_token_id=self.tok.pad_token_id,
                                      stop_strings=stop or None, tokenizer=self.tok if stop else None)
        new = out.sequences[0, n_prompt:].tolist()
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        finish = "length"
        if new and new[-1] in eos:
            new, finish = new[:-1], "stop"
        content = self.tok.decode(new, skip_special_tokens=True)
        for s in stop:
            i = content.find(s)
            if i >= 0:
                content, finish = content[:i], "stop"
        logprobs = None
        label_ids = [int(i) for i in (body.get("logprob_token_ids") or [])]
        if label_ids and not body.get("logprobs"):
            raise BadRequest("when using `logprob_token_ids`, `logprobs` must be set to true.")
        as_ids = bool(body.get("return_tokens_as_token_ids"))

        def entry(tid: int, value: float) -> dict:
            name = f"token_id:{tid}" if as_ids else self._token(tid)
            return {"token": name, "logprob": value, "bytes": list(name.encode("utf-8"))}

        if body.get("logprobs"):
            entries = []
            for step, tid in enumerate(out.sequences[0, n_prompt:].tolist()):
                lp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
                e = entry(tid, float(lp[tid]))
                if label_ids:  # vLLM: exactly these ids (plus the sampled token)
                    wanted = label_ids + ([tid] if tid not in label_ids else [])
                    e["top_logprobs"] = [entry(i, float(lp[i])) for i in wanted]
                elif top:
                    vals, ids = torch.topk(lp, top)
                    e["top_logprobs"] = [entry(i, v) for v, i in zip(vals.tolist(), ids.tolist())]
                entries.append(e)
            logprobs = {"content": entries}
        n_new = int(out.sequences.shape[1]) - n_prompt
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish, "logprobs": logprobs}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}}


def create_app(expert, served_name: str, api_key: typing.Optional[str] = None,
               trust_request_mm_kwargs: bool = False):
    """An aiohttp application serving ``expert`` (a loaded HFVisionLanguageExpert) as ``served_name``;
    with ``api_key``, every route but ``/health`` wants ``Authorization: Bearer <api_key>``; per-request
    ``mm_processor_kwargs`` are refused unless ``trust_request_mm_kwargs`` (as in vLLM)."""
    from aiohttp import web

    chat = ChatModel(expert, trust_request_mm_kwargs)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-vlm-server")

    def error(status: int, msg: str):
        return web.json_response({"error": {"message": msg, "type": "invalid_request_error"}}, status=status)

    async def models(_request):
        return web.json_response({"object": "list", "data": [{"id": served_name, "object": "model",
                                                               "owned_by": "natix-miner"}]})

    async def health(_request):
        return web.Response(text="ok")

    async def tokenize(request):
        body = await request.json()
        ids = chat.tok.encode(body.get("prompt", ""), add_special_tokens=bool(body.get("add_special_tokens", True)))
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": None})

    async def completions(request):
        try:
            body = await request.json()
        except Exception:
            return error(400, "body is not JSON")
        if body.get("model") != served_name:
            return error(404, f"model {body.get('model')!r} does not exist")
        try:
            out = await asyncio.get_running_loop().run_in_executor(pool, chat.complete, body)
        except BadRequest as exc:
            return error(400, str(exc))
        return web.json_response(out)

    async def on_cleanup(_app):
        pool.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def auth(request, handler):
        if api_key and request.path != "/health" and \
                request.headers.get("Authorization", "") != f"Bearer {api_key}":
            return error(401, "invalid API key")
        return await handler(request)

    app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[auth])
    app.add_routes([web.get("/v1/models", models), web.get("/health", health), web.post("/tokenize", tokenize),
                    web.post("/v1/chat/completions", completions)])
    app.on_cleanup.append(on_cleanup)
    return app


def load_expert(model: str, device: str = "cpu", dtype: str = "float32", max_pixels: typing.Optional[int] = None):
    from natix_miner.config import ExpertSpec
    from natix_miner.experts.vlm.hf_backend import HFVisionLanguageExpert

    opts = {"max_pixels": max_pixels} if max_pixels else {}
    expert = HFVisionLanguageExpert(ExpertSpec(name="server", family="hf_vlm", model=model, dtype=dtype,
                                               options=opts))
    expert.load(device)
    return expert


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> None:
    from aiohttp import web

    ap = argparse.ArgumentParser(description="OpenAI-compatible server for a VLM on transformers")
    ap.add_argument("--model", required=True, help="local directory or hub id (offline: a local directory)")
    ap.add_argument("--name", default=None, help="served model name (default: --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    ap.add_argument("--max-pixels", type=int, default=None, help="visual token budget (pixels per image)")
    ap.add_argument("--trust-request-mm-kwargs", action="store_true",
                    help="accept per-request mm_processor_kwargs (max_pixels / min_pixels)")
    args = ap.parse_args(argv)
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        ap.error(f"environment variable {args.api_key_env} is empty")
    expert = load_expert(args.model, args.device, args.dtype, args.max_pixels)
    web.run_app(create_app(expert, args.name or args.model, api_key=key,
                           trust_request_mm_kwargs=args.trust_request_mm_kwargs), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
