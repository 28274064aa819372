"""The part of a VLM expert that does not depend on the backend: options, answer ids, evidence.

A backend subclass supplies the model calls; this base turns their numbers into :class:`Evidence`
and decides which images get the thinking pass (mode ``always``, or ``band`` when the direct answer
is ambiguous).

Usage (a backend)::

    class MyVLM(VLMExpert):
        family = "my_vlm"
        def load(self, device): ...; self.answers = AnswerSet.from_tokenizer(tok, *self.words)
"""

import typing

from natix_miner.experts.base import Evidence, Expert
from natix_miner.experts.vlm.prompt import AnswerSet, VLMOptions, VLMOptionsError, in_band, parse_final_answer
from natix_miner.schema import OptionsError


class VLMExpert(Expert):
    """Shared base of the ``vllm``, ``hf_vlm`` and ``openai_vlm`` families; each declares its
    ``Options`` (:class:`VLMOptions` plus its backend section)."""

    family = "vlm"
    Options = VLMOptions

    def __init__(self, spec, profile=None):
        try:
            super().__init__(spec, profile)
        except OptionsError as exc:  # also a VLMOptionError for the VLM code paths
            raise VLMOptionsError(exc.family, exc.problems) from None
        self.answers: typing.Optional[AnswerSet] = None
        self.stats = {"direct": 0, "thinking": 0, "thinking_timeouts": 0}

    @property
    def words(self) -> typing.Tuple[typing.List[str], typing.List[str]]:
        return self.opts.yes_words, self.opts.no_words

    def wants_thinking(self, p_direct: typing.Optional[float]) -> bool:
        mode = self.opts.thinking.mode
        if mode == "always":
            return True
        if mode == "band":
            return p_direct is None or in_band(p_direct, self.opts.thinking.band)
        return False

    def evidence(self, p_raw: typing.Optional[float], detail: dict,
                 thought: typing.Optional[dict] = None) -> Evidence:
        """Final evidence: a thinking result (when there is one with a probability) wins."""
        detail = dict(detail)
        if p_raw is not None:
            detail["p_direct"] = self.opts.calibrate(p_raw)
        if thought is not None:
            detail["thinking"] = thought
            if thought.get("p") is not None:
                return Evidence(probability=self.opts.calibrate(thought["p"]), detail=detail)
        if p_raw is None:
            return Evidence(probability=0.5, abstain=True, detail=detail)
        return Evidence(probability=self.opts.calibrate(p_raw), detail=detail)

    def thought(self, reasoning: str, p: typing.Optional[float], detail: dict, n_tokens: int,
                timed_out: bool = False) -> dict:
        """Describe one thinking pass; with no scored answer, map the parsed word to a probability."""
        t = self.opts.thinking
        parsed = parse_final_answer(reasoning, *self.words, marker=t.answer_marker)
        if p is None and parsed is not None:
            p = t.parsed_confidence if parsed == "yes" else 1.0 - t.parsed_confidence
            detail = dict(detail, mapped_from_word=True)
        answer = None if p is None else ("yes" if p >= 0.5 else "no")
        return {"p": p, "answer": answer, "parsed": parsed, "tokens": n_tokens, "timed_out": timed_out,
                "reasoning": reasoning[-400:], **detail}

    def memory_bytes(self) -> int:
        return 0
