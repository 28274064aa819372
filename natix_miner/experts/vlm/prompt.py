"""What every VLM backend shares: the question, the answer words, P(yes) from logprobs, thinking parse.

The question goes through the model's own chat template with the image; the model's next-token
distribution over the answer words gives a probability (restricted softmax over the yes / no words,
then an optional Platt calibration fitted offline). Thinking mode asks the model to reason and end with
an answer marker ("Answer:"), stops there, and scores the next token the same way, so a thinking answer
is still a calibrated number rather than a bare word.

Usage::

    from natix_miner.experts.vlm.prompt import AnswerSet, VLMOptions, p_yes_from_logprobs
    opts = VLMOptions.model_validate(spec.options)
    answers = AnswerSet.from_tokenizer(tokenizer, opts.yes_words, opts.no_words)   # raises if not 1 token
    p, detail = answers.probability({token_id: logprob, ...})
    messages = opts.messages(thinking=False)        # chat messages with one image slot
"""

import math
import re
import typing

import pydantic

from natix_miner.experts.base import ExpertOptions
from natix_miner.schema import OptionsError, StrictModel, validate_options

DEFAULT_SYSTEM = ("You inspect dashcam images for a road-maintenance map. Roadwork means active or "
                  "signed construction: cones, barriers, barrels, closed lanes, work vehicles, workers, "
                  "roadwork signs.")
DEFAULT_QUESTION = "Is there roadwork or construction in this image? Answer yes or no."
DEFAULT_THINK_QUESTION = ("Is there roadwork or construction in this image? Think briefly about the cones, "
                          "barriers, signs, machines and workers you see, then finish with 'Answer: yes' "
                          "or 'Answer: no'.")


class VLMOptionError(ValueError):
    """A VLM expert's ``options`` are invalid, or the model's tokenizer cannot answer in one token."""


class VLMOptionsError(OptionsError, VLMOptionError):
    """Options a VLM family refuses at construction: one ``(key, problem)`` per error (an OptionsError
    for ``profile validate``, a VLMOptionError for the VLM code paths)."""


class ThinkingOptions(StrictModel):
    """``mode``: off | band (think only when the direct answer lands inside ``band``) | always."""

    mode: typing.Literal["off", "band", "always"] = "off"
    """off: answer directly; band: think only when the direct answer lands inside ``band``; always."""
    band: typing.Tuple[float, float] = (0.3, 0.7)
    """mode band: the direct P(yes) interval that triggers the thinking pass."""
    question: str = DEFAULT_THINK_QUESTION
    """The thinking question (it must ask to end with the answer marker)."""
    max_tokens: int = pydantic.Field(default=256, ge=1, le=32768)
    """Reasoning token budget."""
    timeout_s: float = pydantic.Field(default=4.0, gt=0)
    """On timeout the direct answer is kept."""
    answer_marker: str = "Answer:"
    """The reasoning stops here; the next token is scored as the answer."""
    parsed_confidence: float = pydantic.Field(default=0.85, gt=0.5, lt=1.0)
    """Only when a backend returns no usable logprobs for the final answer (remote servers that hide
    them): a parsed "yes" maps to this probability, "no" to 1 - it."""


class VLMOptions(ExpertOptions):
    """Options shared by the ``vllm``, ``hf_vlm`` and ``openai_vlm`` families (``spec.options``); each
    family's ``Options`` adds its backend section (``engine`` / ``runtime`` / ``server``)."""

    system_prompt: typing.Optional[str] = DEFAULT_SYSTEM
    """System message; None: none."""
    question: str = DEFAULT_QUESTION
    """The direct yes / no question, asked through the model's chat template with the image."""
    yes_words: typing.List[str] = pydantic.Field(default_factory=lambda: ["yes", "Yes"], min_length=1)
    """Answer words meaning roadwork; each must be a single token (checked at load)."""
    no_words: typing.List[str] = pydantic.Field(default_factory=lambda: ["no", "No"], min_length=1)
    """Answer words meaning no roadwork; single tokens."""
    max_pixels: typing.Optional[int] = pydantic.Field(default=448 * 448, gt=0)
    """Visual token budget: images are resized to at most this many pixels by the model's processor
    (Qwen2/2.5-VL: one token per 28x28 px, Qwen3-VL: per 32x32; 224x224 -> 64 tokens on Qwen2-VL)."""
    min_pixels: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """Lower bound of the resize; None: the processor's."""
    chat_template_kwargs: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """Extra arguments of the chat template (e.g. ``enable_thinking: false``)."""
    calibration_scale: float = 1.0
    """Platt calibration on the answer logit, fitted offline: p = sigmoid(scale * logit + bias)."""
    calibration_bias: float = 0.0
    """Platt calibration bias."""
    thinking: ThinkingOptions = pydantic.Field(default_factory=ThinkingOptions)
    """The optional reasoning pass."""

    @classmethod
    def parse(cls, options: typing.Mapping[str, typing.Any], family: str = "vlm") -> "VLMOptions":
        """Validated options; a :class:`VLMOptionsError` names every bad key (``options.thinking.mode``)."""
        try:
            return validate_options(cls, options, family)
        except OptionsError as exc:
            raise VLMOptionsError(exc.family, exc.problems) from None

    def messages(self, thinking: bool = False, image: typing.Any = None) -> typing.List[dict]:
        """Chat messages with one image slot (``{"type": "image"}`` or the given content part)."""
        part = image if image is not None else {"type": "image"}
        text = self.thinking.question if thinking else self.question
        msgs = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": [part, {"type": "text", "text": text}]})
        return msgs

    def calibrate(self, p_raw: float) -> float:
        p = min(1 - 1e-9, max(1e-9, p_raw))
        z = self.calibration_scale * math.log(p / (1 - p)) + self.calibration_bias
        return 1.0 / (1.0 + math.exp(-z))


class AnswerSet:
    """Token ids of the yes / no words, checked to be single tokens at start-up.

    ``direct`` ids follow the generation prompt (``"yes"``); ``marked`` ids follow the thinking
    marker (``"Answer:" -> " yes"``), so both forms are checked.
    """

    def __init__(self, yes: typing.Dict[int, str], no: typing.Dict[int, str],
                 yes_marked: typing.Dict[int, str], no_marked: typing.Dict[int, str]):
        self.yes, self.no, self.yes_marked, self.no_marked = yes, no, yes_marked, no_marked

    @classmethod
    def from_tokenizer(cls, tokenizer, yes_words: typing.Sequence[str], no_words: typing.Sequence[str],
                       marked: bool = True) -> "AnswerSet":
        def one(word: str) -> int:
            ids = tokenizer.encode(word, add_special_tokens=False)
            if len(ids) != 1:
                raise VLMOptionError(f"answer word {word!r} is {len(ids)} tokens {ids} for this tokenizer; "
                                     "choose answer words that are single tokens")
            return int(ids[0])

        yes = {one(w): w for w in yes_words}
        no = {one(w): w for w in no_words}
        if set(yes) & set(no):
            raise VLMOptionError(f"yes and no words share token ids: {set(yes) & set(no)}")
        ym = {one(" " + w): " " + w for w in yes_words} if marked else {}
        nm = {one(" " + w): " " + w for w in no_words} if marked else {}
        return cls(yes, no, ym, nm)

    def ids(self, marked: bool = False) -> typing.List[int]:
        return list((self.yes_marked if marked else self.yes)) + list((self.no_marked if marked else self.no))

    def probability(self, logprobs: typing.Mapping[int, float], marked: bool = False
                    ) -> typing.Tuple[typing.Optional[float], dict]:
        """P(yes) renormalised over the answer words; ``None`` when none of them was scored."""
        yes = self.yes_marked if marked else self.yes
        no = self.no_marked if marked else self.no
        return restricted_softmax({yes[i]: lp for i, lp in logprobs.items() if i in yes},
                                  {no[i]: lp for i, lp in logprobs.items() if i in no})


def restricted_softmax(yes: typing.Mapping[str, float], no: typing.Mapping[str, float]
                       ) -> typing.Tuple[typing.Optional[float], dict]:
    """From log-probabilities of yes-words and no-words: (P(yes | answered), detail)."""
    vals = [v for v in list(yes.values()) + list(no.values()) if v is not None and math.isfinite(v)]
    if not vals:
        return None, {"answer_mass": 0.0}
    m = max(vals)
    py = sum(math.exp(v - m) for v in yes.values() if v is not None and math.isfinite(v))
    pn = sum(math.exp(v - m) for v in no.values() if v is not None and math.isfinite(v))
    detail = {"logprobs": {**{k: round(float(v), 4) for k, v in yes.items()},
                           **{k: round(float(v), 4) for k, v in no.items()}},
              "answer_mass": float((py + pn) * math.exp(m))}
    return py / (py + pn), detail


def classify_word(token_text: str, yes_words: typing.Iterable[str], no_words: typing.Iterable[str]
                  ) -> typing.Optional[str]:
    """``"yes"`` / ``"no"`` / ``None`` for a decoded token string (case and spaces ignored)."""
    t = token_text.strip().lower()
    if t and t in {w.strip().lower() for w in yes_words}:
        return "yes"
    if t and t in {w.strip().lower() for w in no_words}:
        return "no"
    return None


def parse_final_answer(text: str, yes_words: typing.Iterable[str], no_words: typing.Iterable[str],
                       marker: str = "Answer:") -> typing.Optional[str]:
    """The last yes/no after ``marker`` in a reasoning text, else the last yes/no word at all."""
    words = "|".join(re.escape(w.strip()) for w in list(yes_words) + list(no_words))
    hits = re.findall(re.escape(marker) + r"\s*\**\s*(" + words + r")\b", text, flags=re.IGNORECASE)
    if not hits:
        hits = re.findall(r"\b(" + words + r")\b", text, flags=re.IGNORECASE)
    return classify_word(hits[-1], yes_words, no_words) if hits else None


def strip_after_marker(reasoning: str, marker: str) -> str:
    """Reasoning cut just before the (first) answer marker, so the scorer appends the marker once;
    a reasoning that never reached the marker (token budget) gets a line break before it."""
    i = reasoning.find(marker)
    return reasoning[:i] if i >= 0 else reasoning + "\n"


def in_band(p: float, band: typing.Tuple[float, float]) -> bool:
    return band[0] < p < band[1]
