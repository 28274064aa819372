"""One module per model family behind :class:`natix_miner.experts.base.Expert`.

Families are imported lazily by name, so a host without (say) vLLM can still run profiles that
do not use it. A family module imports only numpy and pydantic at the top (its model libraries
load inside ``load()``), so its typed ``Options`` and its dtype rule can be read anywhere.

Usage::

    from natix_miner.experts import create_expert, FAMILIES, options_class, spec_problems
    expert = create_expert(spec, profile)      # spec.family in FAMILIES; options validated here
    options_class("timm")                      # the family's typed Options (a StrictModel)
    spec_problems(spec)                        # [("options.decode", "Input should be ...")], nothing loads
"""

import importlib
import typing

# family name -> "module:Class"
FAMILIES: typing.Dict[str, str] = {
    "timm": "natix_miner.experts.timm_classifier:TimmClassifier",
    "chaos": "natix_miner.experts.chaos:ChaosExpert",
    "isolated": "natix_miner.experts.isolated:IsolatedExpert",
    "hf_classifier": "natix_miner.experts.hf_classifier:HFClassifier",
    "dino_head": "natix_miner.experts.dino_head:DinoHead",
    "clip_zeroshot": "natix_miner.experts.clip_zeroshot:ClipZeroShot",
    "ocr": "natix_miner.experts.ocr:OcrExpert",
    "ultralytics": "natix_miner.experts.ultralytics_det:UltralyticsDetector",
    "rfdetr": "natix_miner.experts.rfdetr_det:RFDETRDetector",
    "hf_detector": "natix_miner.experts.hf_detector:HFDetector",
    "timm_det": "natix_miner.experts.timm_det:TimmDetector",
    "grounding_dino": "natix_miner.experts.grounding_dino:GroundingDinoDetector",
    "owlv2": "natix_miner.experts.owlv2:Owlv2Detector",
    "sam3": "natix_miner.experts.sam3:Sam3Detector",
    "depth": "natix_miner.experts.depth:DepthExpert",
    "vllm": "natix_miner.experts.vlm.vllm_engine:VLLMVisionLanguageExpert",
    "hf_vlm": "natix_miner.experts.vlm.hf_backend:HFVisionLanguageExpert",
    "openai_vlm": "natix_miner.experts.vlm.openai_backend:OpenAIVisionLanguageExpert",
}
# the families this package ships (FAMILIES may grow at run time: plugins, test doubles)
BUILTIN_FAMILIES: typing.Tuple[str, ...] = tuple(FAMILIES)


class UnknownFamily(KeyError):
    pass


def register_family(name: str, target: str) -> None:
    FAMILIES[name] = target


def expert_class(family: str):
    try:
        target = FAMILIES[family]
    except KeyError:
        raise UnknownFamily(f"unknown expert family {family!r}; known: {sorted(FAMILIES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_expert(spec, profile=None):
    return expert_class(spec.family)(spec, profile)


def unknown_family(family: str) -> str:
    """``unknown family 'x'`` with the nearest known name and the known ones."""
    from natix_miner.schema import nearest

    guess = nearest(family, FAMILIES)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return f"unknown family {family!r}.{hint} Known: {', '.join(sorted(FAMILIES))}"


def options_class(family: str):
    """The family's typed options (``Expert.Options``; ``None`` for a plugin family that declares none).
    Imports the family's module only: no model library, no weights."""
    return getattr(expert_class(family), "Options", None)


def family_packages(family: str) -> typing.Tuple[str, ...]:
    """Third-party modules ``family`` imports when it loads, beyond the core install (its Options'
    ``packages``); ``()`` for wrappers (``isolated``, ``chaos``) and plugin families."""
    if family not in FAMILIES:
        return ()
    return tuple(getattr(options_class(family), "packages", ()))


def model_is_file(family: str) -> bool:
    """Whether the family's ``model:`` names a file / directory / hub id (not a timm architecture
    name or a remote server's model name)."""
    return bool(getattr(options_class(family), "model_is_file", True)) if family in FAMILIES else False


def spec_problems(spec) -> typing.List[typing.Tuple[str, str]]:
    """``[(key, problem)]`` for an expert entry's ``dtype`` and ``options`` against its family's
    declarations (keys relative to the entry: ``dtype``, ``options.decode``); nothing is built."""
    from natix_miner.experts.base import validate_spec

    if spec.family not in FAMILIES:
        return [("family", unknown_family(spec.family))]
    model = options_class(spec.family)
    return [] if model is None else validate_spec(model, spec)[1]
