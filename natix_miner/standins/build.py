"""Builders of stand-in checkpoints: each expert's true architecture with random weights, written in the
file layout its family loads.

One builder per family (``BUILDERS``). Each takes the expert's spec, its architecture record
(``natix_miner/standins/archs/*.json``: the real config of the named model, and the ``tiny``
overrides), the scale and an output directory, and returns the entry of ``stand-ins.json``:
``{"stands_in_for": spec.model, "arch": key, "params": N, "overrides": {...}}`` where ``overrides``
replace keys of the expert's spec (``model``, ``options.weights``, ``options.head``...). Paths in
``overrides`` are relative to the stand-ins directory.

Usage::

    from natix_miner.standins.build import build_profile, build_model
    build_profile(load_profile("h100x2"), "tiny", "stand-ins")      # writes stand-ins/*, stand-ins.json
    model = build_model(profile.expert("eva02"), "full", device="meta")   # nn.Module, no memory spent
"""

import importlib.resources
import json
import logging
import os
import shutil
import time
import typing
from pathlib import Path

import numpy as np

from natix_miner.config import ExpertSpec, Profile
from natix_miner.standins import MANIFEST, StandInError, _merge

log = logging.getLogger("natix_miner.standins")

SCALES = ("tiny", "full")
# families whose models ship inside a pip package: nothing to build, the packaged model is the real one
PACKAGED = {"ocr": "rapidocr-onnxruntime ships its real PP-OCR models"}


# -- architecture records -------------------------------------------------------------------------
def archs() -> typing.Dict[str, dict]:
    """Every architecture record shipped in ``natix_miner/standins/archs/`` (package data), by key."""
    out = {}
    for entry in importlib.resources.files("natix_miner.standins").joinpath("archs").iterdir():
        if entry.name.endswith(".json"):
            out[entry.name[:-5]] = json.loads(entry.read_text())
    return out


def arch_for(spec: ExpertSpec) -> typing.Tuple[str, dict]:
    """The architecture record whose ``refs`` name ``spec.model`` (and whose family is the spec's)."""
    for key, rec in sorted(archs().items()):
        if spec.model in rec.get("refs", []) and rec["family"] == spec.family:
            return key, rec
    known = sorted(r for rec in archs().values() if rec["family"] == spec.family for r in rec.get("refs", []))
    raise StandInError(f"expert {spec.name}: no stand-in architecture for {spec.family} model {spec.model!r} "
                       f"(known: {', '.join(known) or 'none'}); add a record to natix_miner/standins/archs/")


def scaled(rec: dict, scale: str) -> dict:
    """The record with its ``tiny`` overrides merged in (``tiny``), or as it is (``full``)."""
    if scale not in SCALES:
        raise StandInError(f"scale must be one of {SCALES}, not {scale!r}")
    base = {k: v for k, v in rec.items() if k != "tiny"}
    return _merge(base, rec.get("tiny") or {}) if scale == "tiny" else base


# -- helpers ----------------------------------------------------------------------------------------
def _dtype(spec: ExpertSpec, scale: str):
    """float32 for tiny stand-ins; the spec's half precision for full ones (what the card will hold)."""
    import torch

    if scale == "tiny":
        return torch.float32
    return {"float16": torch.float16, "float32": torch.float32}.get(spec.dtype, torch.bfloat16)


def _instantiate(cls, config, device: str, dtype):
    """``cls(config)`` on ``device`` (``meta``: shapes only, no memory) in ``dtype``."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _save_hf(model, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)


def _hf_config(cfg: dict):
    from transformers import AutoConfig

    cfg = dict(cfg)
    cfg.pop("architectures", None)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def _auto_class(auto, config):
    """The model class an ``Auto*`` class would build for ``config``."""
    return auto._model_mapping[type(config)]


def _text_ids(text: dict, tok, scale: str, pad=None, bos=None, eos=None) -> dict:
    """Wire a text config's special ids to the tokenizer's; tiny shrinks the vocabulary to it."""
    text = dict(text)
    if scale == "tiny":
        text["vocab_size"] = (len(tok) + 63) // 64 * 64
    for key, value in (("pad_token_id", pad), ("bos_token_id", bos), ("eos_token_id", eos)):
        if value is not None:
            text[key] = int(value)
    return text


def _classes(spec: ExpertSpec) -> typing.List[str]:
    """The model class names a closed-set detector's ``options.classes`` refers to (in order, unique)."""
    names: typing.List[str] = []
    for values in dict(spec.options.get("classes") or {}).values():
        for v in ([values] if isinstance(values, (str, int)) else list(values or [])):
            if isinstance(v, str) and v not in names:
                names.append(v)
    if not names:
        raise StandInError(f"expert {spec.name}: options.classes names no model classes to build the detector with")
    return names


# -- family builders ----------------------------------------------------------------------------------
# each: (spec, rec (scaled), scale, out_dir, device) -> (model or None, overrides); out_dir None: model only

def _hf_auto(auto, spec, rec, scale, out, device):
    """A transformers model of ``rec["config"]`` as ``auto`` builds it; saved with its processor JSON."""
    config = _hf_config(rec["config"])
    model = _instantiate(_auto_class(auto, config), config, device, _dtype(spec, scale))
    if out is not None:
        _save_hf(model, out)
        (out / "preprocessor_config.json").write_text(json.dumps(rec["processor"], indent=1))
    return model, config


def _hf_classifier(spec, rec, scale, out, device):
    from transformers import AutoModelForImageClassification

    model, _ = _hf_auto(AutoModelForImageClassification, spec, rec, scale, out, device)
    return model, ({} if out is None else {"model": out.name})


def _timm(spec, rec, scale, out, device):
    import timm
    import torch

    head = bool(spec.options.get("head"))
    num_classes = 0 if head else int(spec.options.get("num_classes", 2))
    with torch.device(device):
        model = timm.create_model(rec["arch"], pretrained=False, num_classes=num_classes).eval()
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    dtype = _dtype(spec, scale)  # full: the precision the card holds (the family casts on load)
    save_file({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    over: typing.Dict[str, typing.Any] = {"model": rec["arch"], "options": {"weights": f"{out.name}/model.safetensors"}}
    if head:  # a random linear head over the pooled features, the layout the timm family reads
        rng = np.random.default_rng(0)
        f = int(model.num_features)
        np.savez(out / "head.npz", w=(rng.standard_normal(f) / np.sqrt(f)).astype(np.float32),
                 b=np.zeros((), np.float32))
        over["options"]["head"] = f"{out.name}/head.npz"
    return model, over


def _dino_head(spec, rec, scale, out, device):
    from transformers import AutoModel

    from natix_miner.experts.dino_head import save_head

    model, config = _hf_auto(AutoModel, spec, rec, scale, out, device)
    if out is None:
        return model, {}
    pooling = str(spec.options.get("pooling") or "cls")
    feats = config.hidden_size * (2 if pooling == "cls+mean" else 1)
    rng = np.random.default_rng(0)
    save_head(str(out / "head.npz"), rng.standard_normal(feats) / np.sqrt(feats), 0.0, pooling=pooling)
    return model, {"model": out.name, "options": {"head": f"{out.name}/head.npz"}}


def _rtdetr_tiny_yaml(yaml_name: str) -> dict:
    """RT-DETR's layer graph with every width divided by 4, blocks of one layer, a 2-layer decoder."""
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load(yaml_name)
    d.pop("scales", None)
    d["scale"] = ""

    def shrink(layer):
        f, n, m, args = layer
        args = list(args)
        if m in ("HGStem", "HGBlock", "DWConv", "Conv", "RepC3"):
            k = 2 if m in ("HGStem", "HGBlock") else 1
            args[:k] = [max(8, int(a) // 4) for a in args[:k]]
        elif m == "AIFI":
            args = [max(32, int(args[0]) // 4), 2]
        elif m == "RTDETRDecoder":
            args = [args[0], 64, 100, 4, 2, 2, 256]  # nc, hd, queries, points, heads, layers, ffn
        return [f, min(int(n), 1), m, args]

    d["backbone"] = [shrink(x) for x in d["backbone"]]
    d["head"] = [shrink(x) for x in d["head"]]
    return d


def _ultralytics(spec, rec, scale, out, device):
    import torch
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel

    names = _classes(spec)
    is_rtdetr = "rtdetr" in rec["yaml"]
    cfg: typing.Any = rec["yaml"]
    if is_rtdetr and scale == "tiny":
        cfg = _rtdetr_tiny_yaml(rec["yaml"])
    torch.manual_seed(0)
    model = (RTDETRDetectionModel if is_rtdetr else DetectionModel)(cfg, nc=len(names), verbose=False).eval()
    model.names = dict(enumerate(names))
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    import ultralytics

    model.args = {"task": "detect", "imgsz": int(spec.options.get("imgsz", 640))}
    ckpt = {"model": model, "train_args": dict(model.args), "version": ultralytics.__version__,
            "date": time.strftime("%Y-%m-%d"), "natix_stand_in": True}
    torch.save(ckpt, out / "best.pt")
    return model, {"model": f"{out.name}/best.pt"}


def _rfdetr(spec, rec, scale, out, device):
    import torch

    import rfdetr

    names = _classes(spec)
    kwargs = {"device": "cpu", "num_classes": len(names)}
    if spec.options.get("resolution"):
        kwargs["resolution"] = int(spec.options["resolution"])
    torch.manual_seed(0)
    rf = getattr(rfdetr, rec["variant"])(pretrain_weights=None, **kwargs)
    model = rf.model.model
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_name": rec["variant"],
                "args": {"class_names": names, "num_classes": len(names)}}, str(out / "checkpoint.pth"))
    return model, {"model": f"{out.name}/checkpoint.pth"}


def _timm_det(spec, rec, scale, out, device):
    import torch

    from natix_miner.experts.timm_det import save_checkpoint
    from natix_miner.experts.timm_det_net import CenterNet

    names = _classes(spec)
    width = int(rec.get("width", 64))
    with torch.device(device):
        model = CenterNet(rec["arch"], len(names), width=width).eval()
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    size = int(spec.options.get("image_size") or rec.get("image_size", 224))
    save_checkpoint(model, out / "best.pt", rec["arch"], names, size, width, natix_stand_in=True)
    return model, {"model": f"{out.name}/best.pt"}


def _write_hf(cls, cfg: dict, spec, scale, out, device, processor: typing.Callable):
    """``cls`` built from the config mapping ``cfg``; with ``out``, saved with ``processor()`` beside it."""
    model = _instantiate(cls, _hf_config(cfg), device, _dtype(spec, scale))
    if out is None:
        return model, {}
    _save_hf(model, out)
    processor().save_pretrained(out)
    return model, {"model": out.name}


def _grounding_dino(spec, rec, scale, out, device):
    import transformers as T

    from natix_miner.standins.tokenizers import bert_tokenizer, prompt_words

    tok = bert_tokenizer(prompt_words(spec.options))
    cfg = dict(rec["config"])
    cfg["text_config"] = _text_ids(cfg["text_config"], tok, scale, pad=tok.pad_token_id)
    if scale == "tiny":
        cfg["text_config"]["vocab_size"] = max(cfg["text_config"]["vocab_size"], len(tok))
    return _write_hf(T.GroundingDinoForObjectDetection, cfg, spec, scale, out, device, lambda: T.GroundingDinoProcessor(
        image_processor=T.GroundingDinoImageProcessor(**rec.get("processor", {})), tokenizer=tok))


def _clip_text(cfg: dict, tok, scale: str) -> dict:
    vocab = tok.get_vocab()
    return _text_ids(cfg, tok, scale, pad=0, bos=vocab["<|startoftext|>"], eos=vocab["<|endoftext|>"])


def _owlv2(spec, rec, scale, out, device):
    import transformers as T

    from natix_miner.standins.tokenizers import clip_tokenizer, prompt_words

    cfg = dict(rec["config"])
    tok = clip_tokenizer(prompt_words(spec.options), max_length=int(cfg["text_config"].get("max_position_embeddings", 16)))
    cfg["text_config"] = _clip_text(cfg["text_config"], tok, scale)
    return _write_hf(T.Owlv2ForObjectDetection, cfg, spec, scale, out, device, lambda: T.Owlv2Processor(
        image_processor=T.Owlv2ImageProcessor(**rec.get("processor", {})), tokenizer=tok))


def _sam3(spec, rec, scale, out, device):
    import transformers as T

    from natix_miner.standins.tokenizers import clip_tokenizer, prompt_words

    cfg = dict(rec["config"])
    tok = clip_tokenizer(prompt_words(spec.options), max_length=32)  # Sam3Processor pads text to 32
    text = T.Sam3Config().text_config.to_dict()  # the real text tower unless the record overrides it
    text = {k: v for k, v in text.items() if k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "num_attention_heads", "max_position_embeddings", "projection_dim")}
    cfg["text_config"] = _clip_text(_merge(text, cfg.get("text_config") or {}), tok, scale)
    return _write_hf(T.Sam3Model, cfg, spec, scale, out, device, lambda: T.Sam3Processor(
        image_processor=T.Sam3ImageProcessor(**rec.get("processor", {})), tokenizer=tok))


def _clip_zeroshot(spec, rec, scale, out, device):
    import transformers as T

    from natix_miner.standins.tokenizers import clip_tokenizer, prompt_words, siglip_tokenizer

    cfg = dict(rec["config"])
    words = prompt_words(spec.options)
    max_len = int(cfg["text_config"].get("max_position_embeddings", 64))
    if cfg["model_type"] == "siglip":
        tok = siglip_tokenizer(words, max_length=max_len)
        cfg["text_config"] = _text_ids(cfg["text_config"], tok, scale, pad=0, bos=1, eos=1)
        return _write_hf(T.SiglipModel, cfg, spec, scale, out, device, lambda: T.SiglipProcessor(
            image_processor=T.SiglipImageProcessor(**rec.get("processor", {})), tokenizer=tok))
    tok = clip_tokenizer(words, max_length=max_len)
    cfg["text_config"] = _clip_text(cfg["text_config"], tok, scale)
    return _write_hf(T.CLIPModel, cfg, spec, scale, out, device, lambda: T.CLIPProcessor(
        image_processor=T.CLIPImageProcessor(**rec.get("processor", {})), tokenizer=tok))


def _depth(spec, rec, scale, out, device):
    import transformers as T

    return _write_hf(T.DepthAnythingForDepthEstimation, rec["config"], spec, scale, out, device,
                     lambda: T.DPTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                                 **rec.get("processor", {})))


def _vlm(spec, rec, scale, out, device):
    from natix_miner.standins import vlm

    return vlm.build(spec, rec, scale, out, device, _dtype(spec, scale))


BUILDERS: typing.Dict[str, typing.Callable] = {
    "hf_classifier": _hf_classifier, "timm": _timm, "dino_head": _dino_head, "ultralytics": _ultralytics,
    "rfdetr": _rfdetr, "timm_det": _timm_det, "grounding_dino": _grounding_dino, "owlv2": _owlv2, "sam3": _sam3,
    "clip_zeroshot": _clip_zeroshot, "depth": _depth, "vllm": _vlm, "hf_vlm": _vlm,
}


# -- entry points ---------------------------------------------------------------------------------------
def build_model(spec: ExpertSpec, scale: str = "full", device: str = "meta"):
    """The expert's architecture as an ``nn.Module`` with random weights, nothing written.

    ``device="meta"`` allocates no memory (parameter counts of multi-billion models are free);
    ultralytics and rfdetr run a forward pass while building, so they are built on the CPU."""
    if spec.family not in BUILDERS:
        raise StandInError(f"expert {spec.name}: family {spec.family!r} has no stand-in builder")
    key, rec = arch_for(spec)
    rec = scaled(rec, scale)
    if rec.get("options"):
        spec = spec.model_copy(update={"options": _merge(spec.options, rec["options"])})
    if spec.family in ("ultralytics", "rfdetr"):
        device = "cpu"
    model, _ = BUILDERS[spec.family](spec, rec, scale, None, device)
    return model


def build_expert(spec: ExpertSpec, scale: str, out_dir: typing.Union[str, Path], device: str = "cpu") -> dict:
    """Write one expert's stand-in under ``out_dir/<expert name>``; return its ``stand-ins.json`` entry."""
    if spec.family in PACKAGED:
        return {"stands_in_for": spec.model, "family": spec.family, "packaged": PACKAGED[spec.family], "overrides": {}}
    if spec.family not in BUILDERS:
        raise StandInError(f"expert {spec.name}: family {spec.family!r} has no stand-in builder "
                           f"(families with one: {', '.join(sorted(BUILDERS))})")
    key, rec = arch_for(spec)
    rec = scaled(rec, scale)
    out = Path(out_dir) / spec.name
    t0 = time.perf_counter()
    import torch

    # option overrides of the record (tiny: smaller input sizes, so a CPU keeps the tier budgets)
    options = dict(rec.get("options") or {})
    if options:
        spec = spec.model_copy(update={"options": _merge(spec.options, options)})
    torch.manual_seed(0)
    model, overrides = BUILDERS[spec.family](spec, rec, scale, out, device)
    if options:
        overrides = _merge({"options": options}, overrides)
    entry = {"stands_in_for": spec.model, "family": spec.family, "arch": key, "source": rec.get("source", ""),
             "params": n_params(model), "overrides": overrides}
    if scale == "full" and rec.get("full_engine") and spec.family == "vllm":
        entry["overrides"] = _merge(overrides, {"options": {"engine": rec["full_engine"]}})
    log.info("stand-in %s (%s, %s): %.1f M parameters in %.1fs", spec.name, key, scale, entry["params"] / 1e6,
             time.perf_counter() - t0)
    return entry


def size_text(n: float) -> str:
    """``94.5 GB`` / ``19 MB``."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def estimate_bytes(profile: Profile, scale: str) -> int:
    """Bytes the stand-ins of ``profile`` take on disk, from the records' published sizes (``full``: 2 bytes
    per parameter in half precision, 4 in float32; ``tiny``: 20 MB per expert, a generous mean). Raises
    :class:`StandInError` for an expert without a builder or record."""
    total = 0
    for spec in profile.experts:
        if spec.family in PACKAGED:
            continue
        if spec.family not in BUILDERS:
            raise StandInError(f"expert {spec.name}: family {spec.family!r} has no stand-in builder")
        _, rec = arch_for(spec)
        if scale == "tiny":
            total += 20_000_000
        else:
            per = 4 if spec.family in ("ultralytics", "rfdetr") or _dtype(spec, scale).itemsize == 4 else 2
            total += int(float(rec.get("params_m", 0)) * 1e6 * per)
    return total


def build_profile(profile: Profile, scale: str, out_dir: typing.Union[str, Path], device: str = "cpu",
                  progress: typing.Optional[typing.Callable[[str, dict], None]] = None) -> Path:
    """Stand-ins for every expert of ``profile`` (tiered or referenced) and ``out_dir/stand-ins.json``."""
    if scale not in SCALES:
        raise StandInError(f"scale must be one of {SCALES}, not {scale!r}")
    need = estimate_bytes(profile, scale)  # fails before writing anything when an expert has no record
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if need > free:
        raise StandInError(f"{scale} stand-ins of {profile.name} need about {size_text(need)}, {out} has "
                           f"{size_text(free)} free; choose another --out")
    experts = {}
    for spec in profile.experts:
        experts[spec.name] = build_expert(spec, scale, out, device)
        if progress is not None:
            progress(spec.name, experts[spec.name])
    manifest = {"profile": profile.name, "profile_path": profile.path, "scale": scale,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "experts": experts}
    path = out / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, path)
    return path
