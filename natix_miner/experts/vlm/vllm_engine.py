"""The ``vllm`` family: a vision-language model served by an in-process vLLM ``AsyncLLM`` engine.

The engine (``vllm.v1.engine.async_llm.AsyncLLM``; ``AsyncLLMEngine`` is an alias) is created once
in the miner's event loop (``start_async``) and shut down in ``close_async``. Each image is one
request: the question through the model's chat template with the image, ``max_tokens=1`` and
``logprob_token_ids`` = the yes/no answer tokens, so P(yes) is a softmax over the answer words'
log-probabilities. Concurrent requests are batched by vLLM's own scheduler (continuous batching), so
a profile can give this expert a large ``max_batch`` and a ``max_wait_ms`` of 0. Several experts of
this family can live in one process, each on its own GPUs (``engine.device_ids``) or spread over
several (``engine.tensor_parallel_size`` / ``engine.data_parallel_size``).

Profile entry (every ``engine`` key maps to a vLLM engine argument, see docs/vlm.md)::

    - name: qwen3vl_8b
      family: vllm
      model: Qwen/Qwen3-VL-8B-Instruct-FP8
      device: cuda:1
      dtype: auto
      max_batch: 64
      max_wait_ms: 0
      options:
        max_pixels: 200704                 # visual token budget per image
        thinking: {mode: band, band: [0.35, 0.65], max_tokens: 192, timeout_s: 2.5}
        engine:
          gpu_memory_utilization: 0.45
          max_model_len: 4096
          kv_cache_dtype: fp8
          enable_prefix_caching: true
          max_num_seqs: 64

Usage::

    expert = VLLMVisionLanguageExpert(spec, profile)
    expert.load("cuda:1")           # blocking: options, answer-token check, engine arguments
    await expert.start_async()      # in the serving loop: the engine starts
    evidence = await expert.predict_batch_async([decoded_image])
    await expert.close_async()
"""

import asyncio
import contextlib
import itertools
import os
import typing

import pydantic

from natix_miner.experts.base import Evidence
from natix_miner.experts.vlm.common import VLMExpert
from natix_miner.experts.vlm.prompt import AnswerSet, VLMOptionError, VLMOptions, strip_after_marker
from natix_miner.schema import StrictModel


class VLLMEngineOptions(StrictModel):
    """``options.engine``: the vLLM engine arguments this project exposes (docs/vlm.md explains each).

    Anything else vLLM accepts goes under ``extra`` (checked against ``AsyncEngineArgs`` at load).
    """

    max_model_len: int = pydantic.Field(default=4096, ge=64)
    """Context length (prompt + image tokens + answer)."""
    gpu_memory_utilization: float = pydantic.Field(default=0.9, gt=0, le=1)
    """Share of each card's memory this engine may take (weights + KV cache)."""
    kv_cache_memory_bytes: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """KV cache size in bytes instead of the utilisation share."""
    kv_cache_dtype: typing.Literal["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2",
                                   "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
                                   "turboquant_3bit_nc"] = "auto"
    """KV cache dtype (turboquant_*: vLLM 0.32, GPU, untested here)."""
    enable_prefix_caching: bool = True
    """Reuse the shared prompt prefix across requests."""
    enable_chunked_prefill: typing.Optional[bool] = None
    """None: vLLM's default."""
    max_num_seqs: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """Requests scheduled at once; None: vLLM's default."""
    max_num_batched_tokens: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """Tokens per scheduler step; None: vLLM's default."""
    quantization: typing.Optional[str] = None
    """fp8 | awq | awq_marlin | gptq_marlin | compressed-tensors | ... (``dtype: fp8`` implies fp8)."""
    tensor_parallel_size: int = pydantic.Field(default=1, ge=1)
    """Cards one model is split over."""
    data_parallel_size: int = pydantic.Field(default=1, ge=1)
    """Engine replicas inside vLLM."""
    mm_encoder_tp_mode: typing.Optional[typing.Literal["weights", "data"]] = None
    """How the vision encoder uses tensor parallelism; None: vLLM's default."""
    speculative_config: typing.Optional[typing.Dict[str, typing.Any]] = None
    """vLLM's speculative decoding settings (thinking pass)."""
    device_ids: typing.Optional[typing.List[int]] = None
    """CUDA devices of this engine; None: the expert's ``device`` (cuda:N)."""
    enforce_eager: bool = False
    """No CUDA graphs (slower, less memory, faster start)."""
    limit_mm_per_prompt: typing.Dict[str, int] = pydantic.Field(default_factory=lambda: {"image": 1, "video": 0})
    """Multimodal items per prompt."""
    mm_processor_cache_gb: typing.Optional[float] = pydantic.Field(default=None, ge=0)
    """Multimodal processor cache size; None: vLLM's default."""
    seed: int = 0
    """Sampling seed."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code."""
    env: typing.Dict[str, str] = pydantic.Field(default_factory=dict)
    """Environment for this engine's processes only, set while they start (they inherit it), e.g.
    ``VLLM_CPU_OMP_THREADS_BIND: nobind`` or a core list on CPU hosts shared by several engines."""
    shutdown_timeout_s: float = pydantic.Field(default=30.0, gt=0)
    """Time for the engine processes to exit."""
    warmup: bool = True
    """One scored request on a grey image at start."""
    extra: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """Any other ``AsyncEngineArgs`` keyword (checked against vLLM at start)."""


class Options(VLMOptions):
    """Options of the ``vllm`` family (``natix-miner experts options vllm``). Dtypes: float32,
    float16, bfloat16, ``auto`` (the checkpoint's), ``fp8`` (= auto with fp8 quantisation); int8 is
    refused (quantised weights: ``engine.quantization``)."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "bfloat16", "auto", "fp8")
    auto_dtype: typing.ClassVar[str] = "model"
    cpu_dtype: typing.ClassVar[str] = "as_is"
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("vllm",)

    engine: VLLMEngineOptions = pydantic.Field(default_factory=VLLMEngineOptions)
    """The vLLM engine arguments (see the ``engine.*`` rows)."""


def engine_arguments(opts: VLLMEngineOptions, model: str, dtype: str, device: str,
                     max_pixels: typing.Optional[int], min_pixels: typing.Optional[int],
                     n_logprobs: int) -> typing.Dict[str, typing.Any]:
    """Keyword arguments for ``vllm.AsyncEngineArgs`` (pure: no vLLM import, testable anywhere)."""
    from natix_miner.experts.dtypes import DtypeError, dtype_name

    try:
        name = dtype_name(dtype, device, Options)
    except DtypeError as exc:
        raise VLMOptionError(f"{exc}; quantised weights: options.engine.quantization") from None
    kw: typing.Dict[str, typing.Any] = dict(
        model=model, dtype="auto" if name == "fp8" else name, max_model_len=opts.max_model_len,
        gpu_memory_utilization=opts.gpu_memory_utilization, kv_cache_dtype=opts.kv_cache_dtype,
        enable_prefix_caching=opts.enable_prefix_caching, tensor_parallel_size=opts.tensor_parallel_size,
        data_parallel_size=opts.data_parallel_size, enforce_eager=opts.enforce_eager, seed=opts.seed,
        trust_remote_code=opts.trust_remote_code, max_logprobs=max(20, n_logprobs),
        limit_mm_per_prompt={"video": 0, **opts.limit_mm_per_prompt},
        disable_log_stats=True,
    )
    quant = opts.quantization or ("fp8" if dtype == "fp8" else None)
    optional = dict(kv_cache_memory_bytes=opts.kv_cache_memory_bytes, enable_chunked_prefill=opts.enable_chunked_prefill,
                    max_num_seqs=opts.max_num_seqs, max_num_batched_tokens=opts.max_num_batched_tokens,
                    quantization=quant, mm_encoder_tp_mode=opts.mm_encoder_tp_mode,
                    speculative_config=opts.speculative_config, mm_processor_cache_gb=opts.mm_processor_cache_gb)
    kw.update({k: v for k, v in optional.items() if v is not None})
    mm = {k: v for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v}
    if mm:
        kw["mm_processor_kwargs"] = mm
    device_ids = opts.device_ids
    if device_ids is None and device.startswith("cuda:") and opts.tensor_parallel_size * opts.data_parallel_size == 1:
        device_ids = [int(device.split(":", 1)[1])]
    if device_ids is not None:
        world = opts.tensor_parallel_size * opts.data_parallel_size
        if len(device_ids) < world:
            raise VLMOptionError(f"engine.device_ids {device_ids} has fewer devices than tensor_parallel_size x "
                                 f"data_parallel_size = {world}")
        if device.startswith("cuda"):
            kw["device_ids"] = list(device_ids)
    clash = set(kw) & set(opts.extra)
    if clash:
        raise VLMOptionError(f"engine.extra repeats {sorted(clash)}; set them as engine options instead")
    kw.update(opts.extra)
    return kw


@contextlib.contextmanager
def scoped_env(env: typing.Mapping[str, str]):
    """Set environment variables for the duration of the block (engine processes inherit them)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMVisionLanguageExpert(VLMExpert):
    family = "vllm"
    Options = Options
    is_async = True

    _ids = itertools.count()

    def load(self, device: str) -> None:
        """Blocking part: options, engine arguments, the tokenizer's answer-token check (no engine yet)."""
        from transformers import AutoTokenizer

        self.engine_opts = self.opts.engine
        path = self.resolve_model()
        if not path:
            raise VLMOptionError(f"expert {self.name}: 'model' is required for family vllm")
        self.engine_kwargs = engine_arguments(self.engine_opts, path, self.spec.dtype, device, self.opts.max_pixels,
                                              self.opts.min_pixels,
                                              n_logprobs=len(self.opts.yes_words) + len(self.opts.no_words))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.engine_opts.trust_remote_code)
        self.answers = AnswerSet.from_tokenizer(self.tokenizer, *self.words, marked=self.opts.thinking.mode != "off")
        self.device = device
        self.engine = None

    async def start_async(self) -> None:
        """Create the engine in the running loop, check its tokenizer's answer ids, render the prompts."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        unknown = set(self.engine_kwargs) - set(AsyncEngineArgs.__dataclass_fields__)
        if unknown:
            raise VLMOptionError(f"experts.{self.name}.options.engine: vLLM does not know {sorted(unknown)}")
        with scoped_env(self.engine_opts.env):
            self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.engine_kwargs))
        try:
            engine_answers = AnswerSet.from_tokenizer(self.engine.get_tokenizer(), *self.words,
                                                      marked=self.opts.thinking.mode != "off")
            if engine_answers.ids(False) != self.answers.ids(False):
                raise VLMOptionError(f"expert {self.name}: engine tokenizer answer ids {engine_answers.ids(False)} "
                                     f"differ from the checkpoint tokenizer's {self.answers.ids(False)}")
            self.ids_direct = self.render(thinking=False)
            self.ids_think = self.render(thinking=True)
            if self.engine_opts.warmup:  # the first request pays one-off costs; not a real one
                from PIL import Image

                await self.score(self.ids_direct, Image.new("RGB", (224, 224), (128, 128, 128)))
        except BaseException:
            await self.close_async()
            raise

    def render(self, thinking: bool) -> typing.List[int]:
        """Prompt token ids through vLLM's own chat renderer (the model's template and image placeholder,
        as ``vllm serve`` would build them); the checkpoint tokenizer's template if that API is absent."""
        from PIL import Image

        messages = self.opts.messages(thinking=thinking, image={"type": "image_pil",
                                                                "image_pil": Image.new("RGB", (64, 64))})
        kwargs = {"add_generation_prompt": True, **self.opts.chat_template_kwargs}
        try:
            from vllm.renderers.params import ChatParams

            _, prompt = self.engine.renderer.render_messages(messages, ChatParams(chat_template_kwargs=kwargs))
            if prompt.get("prompt_token_ids"):
                return list(prompt["prompt_token_ids"])
            return self.tokenizer.encode(prompt["prompt"], add_special_tokens=False)
        except (ImportError, AttributeError):
            text = self.tokenizer.apply_chat_template(self.opts.messages(thinking=thinking), tokenize=False, **kwargs)
            return self.tokenizer.encode(text, add_special_tokens=False)

    async def _final(self, ids: typing.List[int], image, params) -> typing.Any:
        if self.engine is None:
            raise RuntimeError(f"expert {self.name}: engine not started (call start_async)")
        rid = f"{self.name}-{next(self._ids)}"
        final = None
        async for out in self.engine.generate({"prompt_token_ids": ids, "multi_modal_data": {"image": image}},
                                              params, rid):
            final = out
        return final

    async def score(self, ids: typing.List[int], image, marked: bool = False
                    ) -> typing.Tuple[typing.Optional[float], dict]:
        """One output token; ``logprob_token_ids`` returns exactly the answer words' log-probabilities."""
        from vllm import SamplingParams

        answer_ids = self.answers.ids(marked=marked)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=answer_ids)
        out = await self._final(ids, image, params)
        step = out.outputs[0].logprobs[0]
        return self.answers.probability({t: step[t].logprob for t in answer_ids if t in step}, marked=marked)

    async def think(self, image) -> dict:
        """Reason up to the answer marker, then score the answer token after it."""
        from vllm import SamplingParams

        t = self.opts.thinking
        params = SamplingParams(max_tokens=t.max_tokens, temperature=0.0, stop=[t.answer_marker])
        out = await self._final(self.ids_think, image, params)
        reasoning = out.outputs[0].text
        tail = self.tokenizer.encode(strip_after_marker(reasoning, t.answer_marker) + t.answer_marker,
                                     add_special_tokens=False)
        p, d = await self.score(self.ids_think + tail, image, marked=True)
        return self.thought(reasoning, p, d, len(out.outputs[0].token_ids))

    async def _one(self, image) -> Evidence:
        pil = image.pil()
        p, detail = await self.score(self.ids_direct, pil)
        self.stats["direct"] += 1
        thought = None
        if self.wants_thinking(p):
            self.stats["thinking"] += 1
            try:
                thought = await asyncio.wait_for(self.think(pil), timeout=self.opts.thinking.timeout_s)
            except asyncio.TimeoutError:  # the request is aborted by the cancelled generator
                self.stats["thinking_timeouts"] += 1
                thought = {"p": None, "answer": None, "timed_out": True}
        return self.evidence(p, detail, thought)

    async def predict_batch_async(self, images) -> typing.List[Evidence]:
        return list(await asyncio.gather(*(self._one(im) for im in images)))

    async def close_async(self) -> None:
        """Stop the engine: its engine-core process and workers exit. Runs on the loop thread (as
        vLLM's own server does at exit): it blocks up to ``shutdown_timeout_s``, once, at close."""
        engine, self.engine = self.engine, None
        if engine is not None:
            self._shutdown(engine)

    def _shutdown(self, engine) -> None:
        engine.shutdown(timeout=self.engine_opts.shutdown_timeout_s)

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            self._shutdown(engine)
