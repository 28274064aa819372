"""Grounding DINO (and MM Grounding DINO) with roadwork text prompts (family ``grounding_dino``).

The prompts become one caption, ``"traffic cone. construction barrier. ... ."``; the model scores
every (query box, caption token) pair. A prompt's score for a box is the maximum over its own
tokens (the tokens between two ``.``), so each box gets the best prompt and that prompt's class.

The model directory needs its BERT vocabulary: ``from_pretrained(dir)`` reads ``vocab.txt`` /
``tokenizer.json`` saved beside the weights. (In transformers 5, ``BertTokenizer(vocab_file=...)``
silently ignores the file; build tokenizers with ``vocab={...}`` or ``from_pretrained``.) The
model marks phrase boundaries with the BERT ids of ``[CLS]`` 101, ``[SEP]`` 102, ``.`` 1012 and
``?`` 1029: a vocabulary that puts them elsewhere runs, but without phrase separation.

Profile entry::

    - name: gdino_tiny
      family: grounding_dino
      model: models/grounding-dino-tiny          # or IDEA-Research/grounding-dino-tiny (cached)
      dtype: float16
      max_batch: 8
      options:
        prompts: {cone: [traffic cone], barrier: [construction barrier], sign: [road work sign],
                  construction_vehicle: [excavator], worker: [worker in safety vest]}
        conf: 0.2
        image_size: 800        # optional: processor shortest edge
"""

import typing

import numpy as np
import pydantic

from natix_miner.experts.detection import DetectorConfigError
from natix_miner.experts.open_vocab import OpenVocabDetector, OpenVocabOptions, cxcywh_to_xyxy


class Options(OpenVocabOptions):
    """Options of the ``grounding_dino`` family (``natix-miner experts options grounding_dino``);
    prompts must not contain ``.`` (it separates the phrases of the caption)."""

    image_size: typing.Optional[int] = pydantic.Field(default=None, gt=0)
    """The processor's shortest edge (longest edge scaled as 1333 / 800); None: the processor's."""


class GroundingDinoDetector(OpenVocabDetector):
    family = "grounding_dino"
    Options = Options

    def load_model(self, device: str) -> None:
        from transformers import AutoModelForZeroShotObjectDetection

        self.load_hf(device, AutoModelForZeroShotObjectDetection)
        if self.opts.image_size:
            s = self.opts.image_size
            self.processor.image_processor.size = {"shortest_edge": s, "longest_edge": max(s, 1333 * s // 800)}
        if any("." in p for p in self.prompts):
            raise DetectorConfigError(f"{self.name}: prompts must not contain '.' (it separates phrases)")
        self.caption = ". ".join(p.lower() for p in self.prompts) + "."
        ids = self.processor.tokenizer(self.caption)["input_ids"]
        self.spans = self.prompt_spans(ids)
        max_len = int(getattr(self.model.config, "max_text_len", 256))
        if len(ids) > max_len:
            raise DetectorConfigError(f"{self.name}: prompts take {len(ids)} tokens, the model reads {max_len}")

    def prompt_spans(self, ids: typing.Sequence[int]) -> typing.List[np.ndarray]:
        """Token positions of each prompt in the caption's ``input_ids``."""
        tok = self.processor.tokenizer
        dot = tok.convert_tokens_to_ids(".")
        specials = set(tok.all_special_ids)
        spans, cur = [], []
        for pos, t in enumerate(ids):
            if t == dot:
                spans.append(np.asarray(cur, dtype=np.int64))
                cur = []
            elif t not in specials:
                cur.append(pos)
        if len(spans) != len(self.prompts) or any(len(s) == 0 for s in spans):
            raise DetectorConfigError(f"{self.name}: could not split the caption {self.caption!r} into "
                                      f"{len(self.prompts)} phrases with this tokenizer")
        return spans

    def detect(self, images):
        if not len(images):
            return []
        out, rgbs = self.forward_hf(images, self.caption)
        probs = out.logits.float().sigmoid().cpu().numpy()          # (B, Q, max_text_len)
        boxes = out.pred_boxes.float().cpu().numpy()                 # (B, Q, 4) cxcywh, normalised
        per_prompt = np.stack([probs[..., s].max(axis=-1) for s in self.spans], axis=-1)  # (B, Q, P)
        return [self.to_detections(per_prompt[i], cxcywh_to_xyxy(boxes[i], rgb.shape[1], rgb.shape[0]), rgb.shape[:2])
                for i, rgb in enumerate(rgbs)]
