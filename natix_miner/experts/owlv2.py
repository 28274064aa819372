"""OWLv2 (and OWL-ViT) with roadwork text prompts (family ``owlv2``).

Each image is padded to a square and every patch proposes one box with a logit per prompt; the
best prompt per box, a confidence cut, the ``max_det`` best boxes and class-wise NMS make the
detections (see :mod:`natix_miner.experts.open_vocab`). Boxes are relative to the padded
square, so they are scaled by ``max(height, width)``.

Profile entry::

    - name: owlv2_base
      family: owlv2
      model: models/owlv2-base-patch16-ensemble   # or google/owlv2-base-patch16-ensemble (cached)
      dtype: float16
      max_batch: 8
      options:
        prompts: {cone: [traffic cone, "a photo of a traffic cone"], barrier: [construction barrier],
                  sign: [road work sign], construction_vehicle: [excavator], worker: [worker in safety vest]}
        conf: 0.1
"""

import numpy as np

from natix_miner.experts.detection import DetectorConfigError, rgb_of, torch_dtype
from natix_miner.experts.hf_detector import load_pretrained
from natix_miner.experts.open_vocab import OpenVocabDetector, cxcywh_to_xyxy


class Owlv2Detector(OpenVocabDetector):
    family = "owlv2"

    def load_model(self, device: str) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        if not self.spec.model:
            raise DetectorConfigError(f"{self.name}: family 'owlv2' needs model: <dir or hub id>")
        ref = self.resolve_model()
        self.dtype = torch_dtype(self.spec.dtype, device, self.family)
        self.model = load_pretrained(AutoModelForZeroShotObjectDetection, ref, self.name,
                                     dtype=self.dtype).eval().to(device)
        self.processor = load_pretrained(AutoProcessor, ref, self.name)

    def warmup(self) -> None:
        self.detect([np.zeros((224, 224, 3), np.uint8)])

    def detect(self, images):
        import torch

        if not len(images):
            return []
        rgbs = [rgb_of(im) for im in images]
        inputs = self.processor(images=list(rgbs), text=[self.prompts] * len(rgbs), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs)
        probs = out.logits.float().sigmoid().cpu().numpy()      # (B, patches, prompts)
        boxes = out.pred_boxes.float().cpu().numpy()             # (B, patches, 4) cxcywh of the padded square
        dets = []
        for i, rgb in enumerate(rgbs):
            side = max(rgb.shape[:2])
            dets.append(self.to_detections(probs[i], cxcywh_to_xyxy(boxes[i], side, side), rgb.shape[:2]))
        return dets
