"""The ``openai_vlm`` family: the VLM tier served elsewhere, over an OpenAI-compatible chat API.

For operators who outgrow one machine: run ``vllm serve <model>`` on a GPU cluster (or
``python -m natix_miner.experts.vlm.hf_server`` on a CPU box) and point this expert at it. Each image
is one ``/v1/chat/completions`` request with the image as a ``data:`` URL, ``max_tokens=1`` and
``logprobs=true``; P(yes) is the softmax over the yes/no tokens' logprobs. At start the server is
asked for its models (``/v1/models``) and, with ``vllm_extensions`` (default), vLLM's ``/tokenize``
checks that every answer word is one token and gives their ids, which each request then names in
vLLM's ``logprob_token_ids`` so the answer words are always scored. Without the extensions (a
non-vLLM server) the ``top_logprobs`` are classified by their text. Thinking mode generates the reasoning (``stop`` at the
answer marker), then continues the assistant message (vLLM's ``continue_final_message``) for one
scored token; a server without that extension gets the parsed answer mapped to a probability.

Profile entry::

    - name: qwen3vl_32b_remote
      family: openai_vlm
      model: Qwen/Qwen3-VL-32B-Instruct-FP8     # the served model name
      max_batch: 64
      max_wait_ms: 0
      options:
        server:
          base_url: http://10.0.0.7:8000/v1
          api_key_env: NATIX_VLM_API_KEY        # the key is read from this variable, never the profile
          timeout_s: 6
          max_connections: 64
          # the pixel budget is the server's: vllm serve ... --mm-processor-kwargs '{"max_pixels": 401408}'

Usage::

    expert = OpenAIVisionLanguageExpert(spec, profile); expert.load("cpu")
    await expert.start_async()
    evidence = await expert.predict_batch_async([decoded_image])
    await expert.close_async()
"""

import asyncio
import base64
import io
import os
import typing

import pydantic

from natix_miner.config import DTYPES
from natix_miner.experts.base import Evidence
from natix_miner.experts.vlm.common import VLMExpert
from natix_miner.experts.vlm.prompt import (AnswerSet, VLMOptionError, VLMOptions, classify_word, restricted_softmax,
                                            strip_after_marker)
from natix_miner.schema import StrictModel


class ServerError(RuntimeError):
    """The remote server answered with an error or something that is not a chat completion."""


class ServerOptions(StrictModel):
    """``options.server`` of the ``openai_vlm`` family."""

    base_url: str = pydantic.Field(pattern=r"^https?://")
    """The server's OpenAI API root, e.g. ``http://10.0.0.7:8000/v1``. Required."""
    api_key_env: typing.Optional[str] = None
    """The environment variable holding the API key (never the key itself in a profile)."""
    timeout_s: float = pydantic.Field(default=8.0, gt=0)
    """Per-request timeout."""
    max_connections: int = pydantic.Field(default=32, ge=1)
    """Concurrent HTTP connections to the server."""
    top_logprobs: int = pydantic.Field(default=20, ge=1, le=20)
    """Log-probabilities asked per position (a non-vLLM server: the answer words must be among them)."""
    vllm_extensions: bool = True
    """Use vLLM's /tokenize check, ``logprob_token_ids`` and ``continue_final_message``."""
    check_tokens: bool = True
    """At start, check through /tokenize that every answer word is one token."""
    send_mm_processor_kwargs: bool = False
    """Send max_pixels / min_pixels per request (vLLM refuses them unless started with
    --trust-request-mm-kwargs; by default the server's own --mm-processor-kwargs set the budget)."""


class Options(VLMOptions):
    """Options of the ``openai_vlm`` family (``natix-miner experts options openai_vlm``). The server
    runs the model: ``dtype`` is ignored (every value accepted)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = DTYPES
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("aiohttp",)
    model_is_file: typing.ClassVar[bool] = False  # the served model's name

    server: ServerOptions
    """Where the model is served (see the ``server.*`` rows). Required."""


def data_url(image) -> str:
    """The image's own bytes when JPEG / PNG / WebP, else a PNG re-encode."""
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}.get(image.format)
    data = image.data
    if mime is None:
        buf = io.BytesIO()
        image.pil().save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAIVisionLanguageExpert(VLMExpert):
    family = "openai_vlm"
    Options = Options
    is_async = True

    def load(self, device: str) -> None:
        self.server = self.opts.server
        if not self.spec.model:
            raise VLMOptionError(f"expert {self.name}: 'model' (the served model name) is required")
        self.model_name = self.spec.model
        self.base = self.server.base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if self.server.api_key_env:
            key = os.environ.get(self.server.api_key_env)
            if not key:
                raise VLMOptionError(f"expert {self.name}: environment variable {self.server.api_key_env} is empty")
            self.headers["Authorization"] = f"Bearer {key}"
        self.device = "remote"
        self.session = None
        self.continue_supported = self.server.vllm_extensions

    async def start_async(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.server.timeout_s),
            connector=aiohttp.TCPConnector(limit=self.server.max_connections))
        try:
            models = await self._get("/models")
            names = [m.get("id") for m in models.get("data", [])]
            if self.model_name not in names:
                raise ServerError(f"{self.base}: model {self.model_name!r} not served (have {names})")
            if self.server.vllm_extensions and self.server.check_tokens:
                await self._check_single_tokens()
        except BaseException:
            await self.close_async()
            raise

    async def _check_single_tokens(self) -> None:
        """vLLM's ``/tokenize``: every answer word must be one token; keep the ids for ``logprob_token_ids``."""
        root = self.base[:-3] if self.base.endswith("/v1") else self.base
        marked = self.opts.thinking.mode != "off"

        async def one(word: str) -> int:
            out = await self._post(root + "/tokenize", {"model": self.model_name, "prompt": word,
                                                        "add_special_tokens": False}, absolute=True)
            ids = out.get("tokens", [])
            if len(ids) != 1:
                raise VLMOptionError(f"expert {self.name}: answer word {word!r} is {len(ids)} tokens {ids} for "
                                     f"{self.model_name}; choose single-token answer words")
            return int(ids[0])

        yes = {await one(w): w for w in self.opts.yes_words}
        no = {await one(w): w for w in self.opts.no_words}
        ym = {await one(" " + w): " " + w for w in self.opts.yes_words} if marked else {}
        nm = {await one(" " + w): " " + w for w in self.opts.no_words} if marked else {}
        self.answers = AnswerSet(yes, no, ym, nm)

    async def _get(self, path: str) -> dict:
        async with self.session.get(self.base + path) as r:
            if r.status != 200:
                raise ServerError(f"GET {self.base + path}: HTTP {r.status}: {(await r.text())[:300]}")
            return await r.json()

    async def _post(self, path: str, body: dict, absolute: bool = False) -> dict:
        url = path if absolute else self.base + path
        async with self.session.post(url, json=body) as r:
            if r.status != 200:
                raise ServerError(f"POST {url}: HTTP {r.status}: {(await r.text())[:300]}")
            return await r.json()

    def _request(self, messages: list, max_tokens: int, **extra) -> dict:
        body = {"model": self.model_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                **extra}
        if self.server.vllm_extensions:
            mm = {k: v for k, v in (("max_pixels", self.opts.max_pixels), ("min_pixels", self.opts.min_pixels)) if v}
            if mm and self.server.send_mm_processor_kwargs:
                body["mm_processor_kwargs"] = mm
            if self.opts.chat_template_kwargs:
                body["chat_template_kwargs"] = self.opts.chat_template_kwargs
        return body

    async def score(self, messages: list, marked: bool = False) -> typing.Tuple[typing.Optional[float], dict]:
        """One scored token. With the answer ids known (vLLM): ``logprob_token_ids`` returns exactly the
        yes/no logprobs; otherwise the ``top_logprobs`` are classified by their text."""
        extra: typing.Dict[str, typing.Any] = {"logprobs": True}
        if self.answers is not None:
            extra.update(logprob_token_ids=self.answers.ids(marked=marked), return_tokens_as_token_ids=True)
        else:
            extra["top_logprobs"] = self.server.top_logprobs
        if marked:
            extra.update(continue_final_message=True, add_generation_prompt=False)
        out = await self._post("/chat/completions", self._request(messages, 1, **extra))
        try:
            first = out["choices"][0]["logprobs"]["content"][0]
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{self.base}: no logprobs in the answer (does the server support logprobs?)") from None
        cands = first.get("top_logprobs") or [first]
        if self.answers is not None:
            by_id = {}
            for cand in cands:
                tok = str(cand.get("token", ""))
                if tok.startswith("token_id:"):
                    by_id[int(tok.split(":", 1)[1])] = float(cand["logprob"])
            p, detail = self.answers.probability(by_id, marked=marked)
        else:
            yes: typing.Dict[str, float] = {}
            no: typing.Dict[str, float] = {}
            for cand in cands:
                side = classify_word(cand.get("token", ""), *self.words)
                bucket = yes if side == "yes" else no if side == "no" else None
                if bucket is not None and cand.get("token") not in bucket:
                    bucket[cand["token"]] = float(cand["logprob"])
            p, detail = restricted_softmax(yes, no)
        detail["token"] = first.get("token")
        return p, detail

    async def think(self, image_part: dict) -> dict:
        t = self.opts.thinking
        messages = self.opts.messages(thinking=True, image=image_part)
        out = await self._post("/chat/completions", self._request(messages, t.max_tokens, stop=[t.answer_marker]))
        choice = out["choices"][0]
        reasoning = choice["message"].get("content") or ""
        n = int((out.get("usage") or {}).get("completion_tokens", 0))
        p, d = None, {}
        if self.continue_supported:
            cont = messages + [{"role": "assistant",
                                "content": strip_after_marker(reasoning, t.answer_marker) + t.answer_marker}]
            try:
                p, d = await self.score(cont, marked=True)
            except ServerError as exc:
                d = {"continue_error": str(exc)[:200]}
        return self.thought(reasoning, p, d, n)

    async def _one(self, image) -> Evidence:
        part = {"type": "image_url", "image_url": {"url": data_url(image)}}
        p, detail = await self.score(self.opts.messages(thinking=False, image=part))
        self.stats["direct"] += 1
        thought = None
        if self.wants_thinking(p):
            self.stats["thinking"] += 1
            try:
                thought = await asyncio.wait_for(self.think(part), timeout=self.opts.thinking.timeout_s)
            except asyncio.TimeoutError:
                self.stats["thinking_timeouts"] += 1
                thought = {"p": None, "answer": None, "timed_out": True}
        return self.evidence(p, detail, thought)

    async def predict_batch_async(self, images) -> typing.List[Evidence]:
        if self.session is None:
            raise RuntimeError(f"expert {self.name}: not started (call start_async)")
        return list(await asyncio.gather(*(self._one(im) for im in images)))

    async def close_async(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()
