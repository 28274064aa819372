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


from natix_miner.experts.open_vocab import OpenVocabDetector, OpenVocabOptions, cxcywh_to_xyxy


class Options(OpenVocabOptions):
    """Options of the ``owlv2`` family (``natix-miner experts options owlv2``): the shared
    open-vocabulary options, nothing of its own."""


class Owlv2Detector(OpenVocabDetector):
    family = "owlv2"
    Options = Options

    def load_model(self, device: str) -> None:
        from transformers import AutoModelForZeroShotObjectDetection

        self.load_hf(device, AutoModelForZeroShotObjectDetection)

    def detect(self, images):
        if not len(images):
            return []
        out, rgbs = self.forward_hf(images, self.prompts)
        probs = out.logits.float().sigmoid().cpu().numpy()      # (B, patches, prompts)
        boxes = out.pred_boxes.float().cpu().numpy()             # (B, patches, 4) cxcywh of the padded square
        dets = []
        for i, rgb in enumerate(rgbs):
            side = max(rgb.shape[:2])
            dets.append(self.to_detections(probs[i], cxcywh_to_xyxy(boxes[i], side, side), rgb.shape[:2]))
        return dets
