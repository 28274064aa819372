"""SAM 3 promptable concept segmentation with roadwork text prompts (family ``sam3``).

SAM 3 answers one text concept per forward pass. The prompts' text embeddings are computed once
at load; per batch the vision encoder runs once and the DETR-style head runs once per prompt
against the shared vision features. A box's score is ``sigmoid(logit) * sigmoid(presence)``
(as in ``Sam3Processor.post_process_object_detection``); boxes are normalised xyxy of the
original image. Masks are computed by the model but not used: boxes and scores are the evidence.

The default SAM 3 is ~840 M parameters (seconds per image on CPU): a GPU expert of the upper tier.

Profile entry::

    - name: sam3
      family: sam3
      model: models/sam3                         # or facebook/sam3 (cached)
      device: cuda:1
      dtype: bfloat16
      max_batch: 4
      options:
        prompts: {cone: [traffic cone], barrier: [construction barrier], sign: [road work sign],
                  construction_vehicle: [excavator], worker: [worker in safety vest]}
        conf: 0.3
"""

import numpy as np

from natix_miner.experts.detection import rgb_of
from natix_miner.experts.open_vocab import OpenVocabDetector, OpenVocabOptions


class Options(OpenVocabOptions):
    """Options of the ``sam3`` family (``natix-miner experts options sam3``): the shared
    open-vocabulary options, nothing of its own."""


class Sam3Detector(OpenVocabDetector):
    family = "sam3"
    Options = Options

    def load_model(self, device: str) -> None:
        import torch
        from transformers import Sam3Model

        self.load_hf(device, Sam3Model)
        text = self.processor(text=self.prompts, return_tensors="pt").to(device)
        with torch.inference_mode():
            feats = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        self.text_embeds = feats.pooler_output            # (P, L, D)
        self.text_mask = text["attention_mask"]           # (P, L)

    def detect(self, images):
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        n = len(rgbs)
        pix = self.processor(images=list(rgbs), return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        scores, boxes = [], []
        with torch.inference_mode():
            vision = self.model.get_vision_features(pixel_values=pix)
            for p in range(len(self.prompts)):
                emb = BaseModelOutputWithPooling(pooler_output=self.text_embeds[p:p + 1].expand(n, -1, -1))
                out = self.model(vision_embeds=vision, text_embeds=emb,
                                 attention_mask=self.text_mask[p:p + 1].expand(n, -1))
                s = out.pred_logits.float().sigmoid()
                if out.presence_logits is not None:
                    s = s * out.presence_logits.float().sigmoid()
                scores.append(s.cpu().numpy())                 # (B, Q)
                boxes.append(out.pred_boxes.float().cpu().numpy())  # (B, Q, 4) normalised xyxy
        dets = []
        for i, rgb in enumerate(rgbs):
            h, w = rgb.shape[:2]
            sc = np.concatenate([s[i] for s in scores])
            bx = np.concatenate([b[i] for b in boxes]) * np.array([w, h, w, h], np.float32)
            idx = np.concatenate([np.full(len(s[i]), p, np.int64) for p, s in enumerate(scores)])
            dets.append(self.to_detections(sc, bx, (h, w), prompt_index=idx))
        return dets

