"""The ``hf_vlm`` family: a vision-language model through transformers (CPU hosts, small deployments).

Same models, prompt and probability as the ``vllm`` family, without vLLM: one batched forward pass
gives the next-token logits after the chat template's generation prompt; P(yes) is the softmax over
the yes/no answer tokens. Thinking mode generates greedily (bounded by ``thinking.max_tokens`` and
``thinking.timeout_s``), cuts at the answer marker and scores the answer token the same way.

Profile entry::

    - name: qwen_vl_cpu
      family: hf_vlm
      model: Qwen/Qwen2.5-VL-3B-Instruct      # or a local directory
      device: cpu
      dtype: bfloat16
      max_batch: 4
      options:
        max_pixels: 200704                   # visual token budget (256 tokens on Qwen2.5-VL)
        thinking: {mode: band, band: [0.35, 0.65], max_tokens: 128, timeout_s: 3}
        runtime: {attn_implementation: sdpa, threads: 4}

Usage::

    expert = HFVisionLanguageExpert(spec, profile); expert.load("cpu")
    [ev] = expert.predict_batch([decoded_image])
"""

import time
import typing

import pydantic

from natix_miner.experts.base import Evidence
from natix_miner.experts.vlm.common import VLMExpert
from natix_miner.experts.vlm.prompt import AnswerSet, VLMOptionError, VLMOptions, strip_after_marker
from natix_miner.schema import StrictModel


class RuntimeOptions(StrictModel):
    """``options.runtime`` of the ``hf_vlm`` family."""

    attn_implementation: typing.Optional[str] = None
    """transformers' attention kernel (``sdpa``, ``eager``, ...); None: its default."""
    threads: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """torch threads of this process; None: unchanged."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code."""


class Options(VLMOptions):
    """Options of the ``hf_vlm`` family (``natix-miner experts options hf_vlm``). Dtypes: float32,
    float16, bfloat16, ``auto`` (the checkpoint's); on CPU float16 runs float32 (bfloat16 is kept);
    fp8 / int8 weights need the ``vllm`` family."""

    dtypes: typing.ClassVar[typing.Tuple[str, ...]] = ("float32", "float16", "bfloat16", "auto")
    auto_dtype: typing.ClassVar[str] = "model"
    cpu_dtype: typing.ClassVar[str] = "no_float16"
    packages: typing.ClassVar[typing.Tuple[str, ...]] = ("transformers",)

    runtime: RuntimeOptions = pydantic.Field(default_factory=RuntimeOptions)
    """How transformers runs the model (see the ``runtime.*`` rows)."""


class HFVisionLanguageExpert(VLMExpert):
    family = "hf_vlm"
    Options = Options

    def load(self, device: str) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from natix_miner.experts.dtypes import resolve_dtype

        rt = self.opts.runtime
        if rt.threads:
            torch.set_num_threads(rt.threads)
        path = self.resolve_model()
        if not path:
            raise VLMOptionError(f"expert {self.name}: 'model' is required for family hf_vlm")
        trust = rt.trust_remote_code
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
        ip = self.processor.image_processor
        if self.opts.max_pixels or self.opts.min_pixels:
            size = {k: v for k, v in dict(ip.size).items() if v is not None}
            if self.opts.max_pixels:
                size["longest_edge"] = self.opts.max_pixels
            if self.opts.min_pixels:
                size["shortest_edge"] = self.opts.min_pixels
            ip.size = size
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.answers = AnswerSet.from_tokenizer(self.tokenizer, *self.words,
                                                marked=self.opts.thinking.mode != "off")
        kwargs = {"dtype": resolve_dtype(self.spec.dtype, device, self.Options), "trust_remote_code": trust}
        if rt.attn_implementation:
            kwargs["attn_implementation"] = rt.attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(path, **kwargs).eval().to(device)
        self.device = device
        self.prompt_direct = self._template(thinking=False)
        self.prompt_think = self._template(thinking=True)

    def warmup(self) -> None:
        from PIL import Image

        grey = Image.new("RGB", (224, 224), (128, 128, 128))
        self.score([self.prompt_direct], [grey])

    def _template(self, thinking: bool) -> str:
        return self.processor.apply_chat_template(self.opts.messages(thinking=thinking), tokenize=False,
                                                  add_generation_prompt=True, **self.opts.chat_template_kwargs)

    def _inputs(self, texts: typing.Sequence[str], images: typing.Sequence[typing.Any]):
        batch = self.processor(text=list(texts), images=list(images), padding=True, return_tensors="pt")
        return batch.to(self.device)

    def score(self, texts: typing.Sequence[str], pils: typing.Sequence[typing.Any], marked: bool = False
              ) -> typing.List[typing.Tuple[typing.Optional[float], dict]]:
        """One forward pass; P(yes) over the answer tokens at the last position of each text."""
        import torch

        ids = self.answers.ids(marked=marked)
        with torch.inference_mode():
            logits = self.model(**self._inputs(texts, pils)).logits[:, -1, :].float()
            lp = torch.log_softmax(logits, dim=-1)[:, ids].cpu().tolist()
        return [self.answers.probability(dict(zip(ids, row)), marked=marked) for row in lp]

    def reason(self, pils: typing.Sequence[typing.Any]) -> typing.Tuple[typing.List[str], typing.List[int], bool]:
        """Greedy reasoning for each image, bounded by tokens and wall time."""
        import torch

        t = self.opts.thinking
        inputs = self._inputs([self.prompt_think] * len(pils), pils)
        t0 = time.monotonic()
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=t.max_tokens, do_sample=False,
                                      max_time=t.timeout_s, pad_token_id=self.tokenizer.pad_token_id,
                                      stop_strings=[t.answer_marker], tokenizer=self.tokenizer)
        timed_out = time.monotonic() - t0 >= t.timeout_s
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id
        counts = [int((row != pad).sum()) for row in new]
        return texts, counts, timed_out

    def predict_batch(self, images) -> typing.List[Evidence]:
        pils = [im.pil() for im in images]
        direct = self.score([self.prompt_direct] * len(pils), pils)
        self.stats["direct"] += len(pils)
        need = [i for i, (p, _) in enumerate(direct) if self.wants_thinking(p)]
        thoughts: typing.Dict[int, dict] = {}
        if need:
            self.stats["thinking"] += len(need)
            texts, counts, timed_out = self.reason([pils[i] for i in need])
            self.stats["thinking_timeouts"] += int(timed_out)
            marker = self.opts.thinking.answer_marker
            prompts = [self.prompt_think + strip_after_marker(r, marker) + marker for r in texts]
            scored = self.score(prompts, [pils[i] for i in need], marked=True)
            for i, r, n, (p, d) in zip(need, texts, counts, scored):
                thoughts[i] = self.thought(r, p, d, n, timed_out)
        return [self.evidence(p, d, thoughts.get(i)) for i, (p, d) in enumerate(direct)]

    def memory_bytes(self) -> int:
        return super(VLMExpert, self).memory_bytes()  # parameters and buffers of self.model

