"""``natix-miner build PROFILE --data D --out runs/NAME``: from labelled data to a ready profile.

The build is a graph of steps kept as data (:class:`Step`: name, what it needs, its inputs, its
outputs, its estimated cost, the function that runs it). :func:`plan` walks the profile:

* ``data`` - the train / validation / test split (procedural data: three seeds, never overlapping);
* ``train:EXPERT`` for every expert whose checkpoint the profile names and this machine lacks:
  classifiers (``timm``, ``hf_classifier``: :mod:`.trainer`), detectors (``ultralytics``,
  ``rfdetr``, ``hf_detector``, ``timm_det``: boxes from the data when it carries them, procedural
  scenes do, else auto-labelled; then :mod:`.detector`), VLM adapters; a family without a trainer
  here is planned and reported as ``not available: <why>``, never faked;
* ``profile`` - the ready profile ``OUT/<name>.yaml``, pointing at the new checkpoints;
* ``calibrate`` - the consensus (``OUT/<name>.consensus.json``, :mod:`.calibrate`) and the
  escalation band, on the validation images;
* ``evaluate`` - the cascade through the real engine on the held-out images, and every expert
  alone, every tier, every augmentation level, real against synthetic (:mod:`.evaluate`);
* ``report`` - ``OUT/report.md`` and its plots (:mod:`.plots`);
* ``install`` (``--install``) - the checkpoints copied to the paths the source profile names, the
  consensus beside it and the fitted escalation band into it, so the profile itself is ready.

Each step writes ``OUT/.build/STEP.json`` with the hash of its inputs (its settings, the data spec
and the hashes of the steps it needs) when it finishes; a re-run skips a step whose marker matches
and whose outputs exist, so after a kill the same command continues (a classifier also resumes
mid-training from its ``last.pt``). ``--dry-run`` prints the plan and each step's estimated cost.

Usage::

    natix-miner build demo-cpu --data procedural --out runs/demo-cpu --dry-run
    natix-miner build demo-cpu --data procedural --out runs/demo-cpu --install
    natix-miner build h100x1 --data data/roadwork --out runs/h100x1 --scale tiny

    from natix_miner.training.build import plan, run_build
    steps = plan(load_profile("demo-cpu"), "procedural", "runs/demo-cpu")
    summary = run_build(steps, out="runs/demo-cpu")
"""

import dataclasses
import hashlib
import json
import logging
import shutil
import time
import typing
from pathlib import Path

log = logging.getLogger("natix_miner.training")

CLASSIFIER_FAMILIES = ("timm", "hf_classifier")
DETECTOR_FAMILIES = ("ultralytics", "rfdetr", "hf_detector", "timm_det")
# random init (ultralytics: from the name); timm_det: the backbone's classification weights
DEFAULT_DETECTOR_INIT = {"rfdetr": "nano", "hf_detector": "d_fine", "timm_det": "package:efficientnet_lite0"}
# the recipe keys each trainer's step hash covers
CLASSIFIER_KEYS = {"init", "epochs", "batch_size", "lr", "warmup_steps", "image_size", "imgsz", "freeze_backbone",
                   "label_smoothing", "export_dtype", "time_s", "gpu_gb", "max_images"}
DETECTOR_KEYS = CLASSIFIER_KEYS | {"augment_copies", "arch"}
VLM_KEYS = {"init", "epochs", "steps", "batch_size", "lr", "warmup_steps", "max_images"}
VLM_FAMILIES = ("vllm", "hf_vlm", "openai_vlm")
TINY = {"train_images": 24, "val_images": 16, "test_images": 16, "epochs": 1, "max_steps": 3, "imgsz": 64,
        "long_side": 128, "batch_size": 8}
# rough seconds per training image and epoch when no time_s hint is given (CPU, 2 cores / one GPU)
SECONDS_PER_IMAGE = {"classifier": (0.08, 0.004), "detector": (0.15, 0.01), "vlm": (30.0, 0.5)}


class BuildError(ValueError):
    """An operator mistake (unknown profile, no data, a step that cannot run): one ``error:`` line."""


@dataclasses.dataclass
class Step:
    """One node of the build graph."""

    name: str
    kind: str  # data | train | profile | calibrate | evaluate | report | install
    needs: typing.List[str]
    inputs: typing.Dict[str, typing.Any]  # what the hash covers (besides the needed steps' hashes)
    outputs: typing.List[str]  # paths relative to OUT that must exist for the step to count as done
    cost_s: float  # estimated seconds
    gpu_gb: float = 0.0  # estimated GPU memory (0: CPU only or unknown)
    run: typing.Optional[typing.Callable[["Context"], dict]] = None
    unavailable: typing.Optional[str] = None  # why it cannot run in this build
    note: str = ""


@dataclasses.dataclass
class Context:
    """What the steps share while one build runs."""

    profile: typing.Any  # the source Profile
    data: str
    out: Path
    spec: typing.Any  # BuildSpec after --scale
    scale: str
    progress: bool = True
    install: bool = False
    retrain: typing.Sequence[str] = ()  # experts trained again although their checkpoint exists ("all")
    command: str = ""  # the command line the report cites
    checkpoints: typing.Dict[str, dict] = dataclasses.field(default_factory=dict)  # expert -> changes
    _splits: typing.Optional[dict] = None

    def splits(self) -> dict:
        """``{"train", "val", "test"}`` lists of samples (rendered or read once per process)."""
        if self._splits is None or len(self._splits) < 3:
            self._splits = load_splits(self.data, self.spec, progress=self.progress)
        return self._splits

    def split(self, name: str) -> list:
        """One split; procedural data renders only that one (calibrate needs no training scenes)."""
        if self._splits is not None and name in self._splits:
            return self._splits[name]
        if not _is_procedural(self.data):
            return self.splits()[name]
        self._splits = dict(self._splits or {})
        self._splits[name] = load_splits(self.data, self.spec, progress=self.progress, only=name)[name]
        return self._splits[name]

    @property
    def ready_path(self) -> Path:
        return self.out / f"{self.profile.name}.yaml"


# ------------------------------------------------------------------------------------------------
# data


def _is_procedural(data: str) -> bool:
    return data == "procedural" or data.startswith("procedural:")


def load_splits(data: str, spec, progress: bool = True, only: typing.Optional[str] = None) -> dict:
    """Train / validation / test samples. Procedural data renders three seeds (``seed``, ``seed + 1``,
    ``seed + 2``: disjoint scenes; ``only``: just that split); a dataset is split by label, seeded."""
    from natix_miner.training.datasets import (DataError, balanced_subset, from_procedural, load_samples,
                                               split_samples)

    if _is_procedural(data):
        parts = data.split(":")
        sides = {"train": spec.long_side, "val": spec.eval_long_side, "test": spec.eval_long_side}
        if len(parts) > 2:  # procedural:N:SIDE renders every split at SIDE
            sides = dict.fromkeys(sides, int(parts[2]))
        return {name: from_procedural(n, seed=spec.seed + k, long_side=sides[name], progress=progress)
                for k, (name, n) in enumerate((("train", spec.train_images), ("val", spec.val_images),
                                               ("test", spec.test_images))) if only in (None, name)}
    try:
        samples = load_samples(data, seed=spec.seed, labelled=True, progress=progress)
    except DataError as exc:
        raise BuildError(str(exc)) from None
    total = spec.train_images + spec.val_images + spec.test_images
    if len(samples) > total:
        samples = balanced_subset(samples, total, spec.seed)
    rest, test = split_samples(samples, spec.test_images / len(samples), seed=spec.seed)
    train, val = split_samples(rest, spec.val_images / max(1, len(rest)), seed=spec.seed + 1)
    return {"train": train, "val": val, "test": test}


def _run_data(ctx: Context) -> dict:
    from natix_miner.training.datasets import label_counts

    sp = ctx.splits()
    for name, samples in sp.items():
        if len({s.label for s in samples}) < 2:
            raise BuildError(f"{ctx.data}: the {name} split has one class only ({label_counts(samples)}); "
                             "give more images")
    doc = {name: {"n": len(s), "labels": label_counts(s), "boxes": sum(bool(x.meta.get("boxes")) for x in s),
                  "keys_sha256": hashlib.sha256("\n".join(x.key for x in s).encode()).hexdigest()}
           for name, s in sp.items()}
    (ctx.out / "data.json").write_text(json.dumps({"data": ctx.data, **doc}, indent=1))
    return {k: v["n"] for k, v in doc.items()}


# ------------------------------------------------------------------------------------------------
# expert steps


def _missing_refs(spec, profile) -> typing.List[str]:
    """Roles (``model``, ``weights``, ``head``) of ``spec``'s own files that are not on this machine
    (a file it borrows from another expert is that expert's step)."""
    from natix_miner.preflight import check_ref, expert_refs

    base = Path(profile.path).parent if profile.path else None
    return [r.role for r in expert_refs(spec, profile) if r.role in ("model", "weights", "head")
            and check_ref(r, base) is not None]


def _work(ctx: Context, expert: str) -> Path:
    return ctx.out / "experts" / expert


def _classifier_step(ctx: Context, spec, roles, cost) -> Step:
    rec = ctx.spec.recipe(spec.name)
    unavailable = None
    if "head" in roles:
        unavailable = ("a linear head over frozen features (options.head) has no build step yet; "
                       "`python scripts/build_demo_head.py` fits one")
    elif spec.family == "hf_classifier" and not rec.init:
        unavailable = "a transformers classifier needs build.experts.NAME.init: a local model folder to fine-tune"
    out = "best.pth" if spec.family == "timm" else "best"
    return Step(f"train:{spec.name}", "train", ["data"], {"recipe": rec.model_dump(include=CLASSIFIER_KEYS),
                                                         "family": spec.family,
                                                         "model": spec.model, "scale": ctx.scale},
                [f"experts/{spec.name}/{out}"], *cost, run=lambda c: _train_classifier(c, spec),
                unavailable=unavailable,
                note=f"{spec.family} {spec.model} from {rec.init or 'random init'}")


def _tiny(ctx: Context, value, key: str):
    return min(value, TINY[key]) if ctx.scale == "tiny" and value is not None else value


def _training_samples(splits: dict, rec) -> list:
    """The training split, cut to the recipe's ``max_images`` when it sets one (every trainer)."""
    return splits["train"][:rec.max_images] if rec.max_images else splits["train"]


def _train_classifier(ctx: Context, spec) -> dict:
    import torch

    from natix_miner.training.trainer import TrainConfig, TrainingError, train

    rec = ctx.spec.recipe(spec.name)
    work = _work(ctx, spec.name)
    sp = ctx.splits()
    family = "timm" if spec.family == "timm" else "transformers"
    size = rec.image_size or spec.options.get("image_size")
    cfg = TrainConfig(out=str(work), family=family, model=spec.model if family == "timm" else rec.init,
                      weights=rec.init if family == "timm" else None, name=spec.name, image_size=size,
                      epochs=_tiny(ctx, rec.epochs, "epochs"), batch_size=_tiny(ctx, rec.batch_size, "batch_size"),
                      lr=rec.lr, warmup_steps=rec.warmup_steps, label_smoothing=rec.label_smoothing,
                      device=ctx.spec.device, seed=ctx.spec.seed, freeze_backbone=rec.freeze_backbone,
                      workers=rec.workers,
                      max_steps_per_epoch=TINY["max_steps"] if ctx.scale == "tiny" else None)
    try:
        res = train(cfg, _training_samples(sp, rec), sp["val"], resume=(work / "last.pt").exists())
    except TrainingError as exc:
        raise BuildError(f"train:{spec.name}: {exc}") from None
    entry = res["expert"]
    if family == "timm":
        path = work / "best.pth"
        if rec.export_dtype == "float16":
            sd = torch.load(path, map_location="cpu", weights_only=True)
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)
        opts = {k: v for k, v in entry["options"].items() if k != "weights"}
        ctx.checkpoints[spec.name] = {"options": {**opts, "weights": path}, "drop_options": ["head"]}
    else:
        ctx.checkpoints[spec.name] = {"model": work / "best", "options": dict(entry.get("options", {}))}
    b = res["best"] or {}
    return {"best_epoch": res["best_epoch"], "val_mcc": round(b.get("mcc", 0.0), 4),
            "val_accuracy": round(b.get("accuracy", 0.0), 4)}


def _boxes_key(teachers: str) -> str:
    return "+".join(t.strip().replace("/", "_").replace("=", "-") for t in teachers.split(",") if t.strip())


def _detector_steps(ctx: Context, spec, roles, cost, seen: set) -> typing.List[Step]:
    """``autolabel:EXPERT`` (data without boxes: the teachers' fused boxes) then ``train:EXPERT``."""
    rec = ctx.spec.recipe(spec.name)
    init = _detector_init(spec, rec)
    steps, needs = [], ["data"]
    if not _is_procedural(ctx.data):
        key = _boxes_key(rec.teachers)
        name = f"autolabel:{key}"  # one per set of teachers, shared by the detectors that use it
        if name not in seen:
            n = ctx.spec.train_images + ctx.spec.val_images
            k = len([t for t in rec.teachers.split(",") if t.strip()])
            steps.append(Step(name, "autolabel", ["data"], {"teachers": rec.teachers},
                              [f"boxes/{key}/coco/instances.json"], n * k * (0.05 if cost[1] else 1.0),
                              run=lambda c: _autolabel(c, rec.teachers),
                              note=f"boxes from {rec.teachers} on the training and validation images"))
            seen.add(name)
        needs = ["data", name]
    inputs = {"recipe": rec.model_dump(include=DETECTOR_KEYS), "init": init, "options": spec.options,
              "scale": ctx.scale}
    if spec.family != "ultralytics":
        inputs["family"] = spec.family
    steps.append(Step(f"train:{spec.name}", "train", needs, inputs, [f"experts/{spec.name}/expert.yaml"], *cost,
                      run=lambda c: _train_detector(c, spec),
                      note=f"{spec.family} from {init} on " + ("the scenes' true boxes" if _is_procedural(ctx.data)
                                                               else "auto-labelled boxes")))
    return steps


def _autolabel(ctx: Context, teachers: str) -> dict:
    from natix_miner.training.autolabel import AutolabelConfig, AutolabelError, autolabel, parse_teachers

    sp = ctx.splits()
    try:
        cfg = AutolabelConfig(data=ctx.data, teachers=parse_teachers(teachers), seed=ctx.spec.seed,
                              out=str(ctx.out / "boxes" / _boxes_key(teachers)), device=ctx.spec.device)
        res = autolabel(cfg, samples=sp["train"] + sp["val"], progress=ctx.progress)
    except (AutolabelError, ValueError) as exc:
        raise BuildError(f"autolabel:{_boxes_key(teachers)}: {exc}") from None
    return {k: res[k] for k in ("images", "roadwork_kept", "roadwork_without_boxes", "background", "boxes")}


def _detector_init(spec, rec) -> str:
    """The recipe's ``init``, else a random-init start named after the profile's model path
    (``models/yolo11x-roadwork/best.pt`` -> ``yolo11x.yaml``, ``rfdetr-medium-...`` -> ``medium``)."""
    import re

    if rec.init:
        return rec.init
    if spec.family == "rfdetr":
        found = re.search(r"(nano|small|medium|large)", (spec.model or "").lower())
        return found.group(1) if found else DEFAULT_DETECTOR_INIT["rfdetr"]
    return DEFAULT_DETECTOR_INIT.get(spec.family) or _detector_yaml(spec.model)


def _unfinished(work: Path, family: str) -> bool:
    """A run of ``family`` in ``work`` to resume: ultralytics' ``last.pt`` of a run stopped before its
    last epoch (a finished one is marked epoch -1); the PyTorch loops' (hf_detector, timm_det)
    ``last.pt`` in any case (resuming a finished run trains nothing more and keeps its best). A step
    whose inputs changed starts from an empty folder (:func:`run_build`)."""
    last = work / "train" / ("weights/last.pt" if family == "ultralytics" else "last.pt")
    if not last.exists():
        return False
    import torch

    try:
        ck = torch.load(last, map_location="cpu", weights_only=False)
    except Exception:  # a checkpoint cut short by the kill: start the step over
        return False
    if family == "ultralytics":
        return int(ck.get("epoch", -1)) != -1
    return True


def _detector_yaml(model: typing.Optional[str]) -> str:
    """``models/yolo11x-roadwork/best.pt`` -> ``yolo11x.yaml`` (random init, never downloaded)."""
    import re

    found = re.search(r"(rtdetr-[a-z]|yolo[0-9]+[nslmx]?)", (model or "").lower())
    return f"{found.group(1)}.yaml" if found else "yolo11n.yaml"


def _train_detector(ctx: Context, spec) -> dict:
    from natix_miner.training.coco import CocoError, coco_from_samples
    from natix_miner.training.detector import DetectorConfig, DetectorTrainingError, train_detector

    rec = ctx.spec.recipe(spec.name)
    work = _work(ctx, spec.name)
    sp = ctx.splits()
    train = _training_samples(sp, rec)
    labelled = ctx.out / "boxes" / _boxes_key(rec.teachers) / "coco" / "instances.json"
    if labelled.exists():
        ann = labelled
    elif any(s.meta.get("boxes") for s in sp["train"]):
        ann = coco_from_samples(train + sp["val"], work / "coco")
    else:
        raise BuildError(f"train:{spec.name}: the training images carry no boxes and none were auto-labelled")
    size_key = {"rfdetr": "resolution", "timm_det": "image_size"}.get(spec.family, "imgsz")
    imgsz = _tiny(ctx, rec.imgsz or int(spec.options.get(size_key) or (224 if spec.family == "timm_det" else 640)),
                  "imgsz")
    model, model_options = _detector_init(spec, rec), {}
    if spec.family == "timm_det":  # model: the backbone architecture; init: its classification weights
        model, model_options = rec.arch or "tf_efficientnet_lite0", {"init": model, "warmup_steps": rec.warmup_steps}
    cfg = DetectorConfig(coco=str(ann), out=str(work), epochs=_tiny(ctx, rec.epochs, "epochs"), imgsz=imgsz,
                         model=model, model_options=model_options,
                         batch=_tiny(ctx, rec.batch_size, "batch_size"), device=ctx.spec.device,
                         lr=rec.lr if "lr" in rec.model_fields_set else None,  # else the family's own
                         seed=ctx.spec.seed, val_fraction=len(sp["val"]) / (len(train) + len(sp["val"])),
                         resume=_unfinished(work, spec.family), name=spec.name, amp=False,
                         workers=rec.workers, family=spec.family,
                         augment_copies=0 if ctx.scale == "tiny" else rec.augment_copies)
    try:
        res = train_detector(cfg)
    except (CocoError, DetectorTrainingError, ValueError) as exc:
        raise BuildError(f"train:{spec.name}: {exc}") from None
    ctx.checkpoints[spec.name] = {"model": Path(res["best"]), "options": {size_key: imgsz}}
    out = {"boxes": res["boxes"], "metrics": {k: round(v, 4) for k, v in res["metrics"].items()
                                              if k.startswith("metrics/")}}
    if res.get("image_level"):
        out["image_level_mcc"] = round(float(res["image_level"].get("mcc", 0.0)), 4)
    return out


def _vlm_step(ctx: Context, spec, roles, cost) -> Step:
    """LoRA on the VLM tier's yes/no question (``natix_miner/training/vlm_lora.py``), from the recipe's
    ``init`` (a local base model) or, with ``--retrain``, the profile's own model; the merged
    checkpoint becomes the expert's model."""
    rec = ctx.spec.recipe(spec.name)
    unavailable = None
    if not rec.init and roles != ["retrain"]:
        unavailable = (f"the base model {spec.model} is not here: set build.experts.{spec.name}.init to a local "
                       "base model folder to fine-tune")
    return Step(f"train:{spec.name}", "train", ["data"], {"recipe": rec.model_dump(include=VLM_KEYS),
                                                         "family": spec.family, "scale": ctx.scale},
                [f"experts/{spec.name}/expert.yaml"], *cost, run=lambda c: _train_vlm(c, spec),
                unavailable=unavailable, note=f"LoRA on {rec.init or spec.model}, merged for {spec.family}")


def _train_vlm(ctx: Context, spec) -> dict:
    from natix_miner.training.vlm_lora import VLMTrainingError, train_vlm

    rec = ctx.spec.recipe(spec.name)
    sp = ctx.splits()
    train = _training_samples(sp, rec)
    steps = rec.steps or max(1, rec.epochs * len(train) // rec.batch_size)
    if ctx.scale == "tiny":
        steps = min(steps, TINY["max_steps"])
    from natix_miner.experts import options_class

    # the keys the trained hf_vlm expert serves with (a vllm entry's ``engine`` is not one of them)
    options = {k: v for k, v in spec.options.items() if k in options_class("hf_vlm").model_fields}
    kw = {"eval_limit": TINY["val_images"]} if ctx.scale == "tiny" else {}
    try:
        res = train_vlm(rec.init or spec.model, ctx.data, str(_work(ctx, spec.name)), steps=steps,
                        resume=(_work(ctx, spec.name) / "last.pt").exists(), train_samples=train,
                        val_samples=sp["val"], batch_size=max(2, rec.batch_size), lr=rec.lr,
                        warmup_steps=rec.warmup_steps, options=options, name=spec.name, seed=ctx.spec.seed,
                        device=ctx.spec.device, progress=ctx.progress, **kw)
    except VLMTrainingError as exc:
        raise BuildError(f"train:{spec.name}: {exc}") from None
    ctx.checkpoints[spec.name] = {"model": Path(res["merged"])}
    return {"steps": steps, "mcc_before": round(res["before"]["mcc"], 4), "mcc_after": round(res["after"]["mcc"], 4)}


def _unavailable_step(ctx: Context, spec, roles, cost, why: str) -> Step:
    return Step(f"train:{spec.name}", "train", ["data"], {"family": spec.family}, [], *cost, unavailable=why,
                note=f"{spec.family} {spec.model or ''}".strip())


def _expert_cost(ctx: Context, spec, kind: str) -> typing.Tuple[float, float]:
    rec = ctx.spec.recipe(spec.name)
    gpu = not str(spec.device).startswith("cpu") and ctx.spec.device != "cpu"
    if rec.time_s and ctx.scale == "full":
        secs = rec.time_s
    else:
        per = SECONDS_PER_IMAGE.get(kind, (0.1, 0.01))[1 if gpu else 0]
        secs = per * ctx.spec.train_images * _tiny(ctx, rec.epochs, "epochs")
    gb = rec.gpu_gb or (4 * spec.memory_gb if spec.memory_gb and gpu else 0.0)
    return float(secs), float(gb)


def expert_steps(ctx: Context) -> typing.List[Step]:
    """One ``train:EXPERT`` step per tiered expert whose checkpoint is missing here."""
    steps, seen = [], set()
    for spec in ctx.profile.tiered_experts:
        roles = _missing_refs(spec, ctx.profile)
        if not roles and (spec.name in ctx.retrain or "all" in ctx.retrain) and spec.name in ctx.spec.experts:
            roles = ["retrain"]  # --retrain: experts with a recipe, trained again
        if not roles:
            continue
        fam = spec.family
        if fam in CLASSIFIER_FAMILIES:
            steps.append(_classifier_step(ctx, spec, roles, _expert_cost(ctx, spec, "classifier")))
        elif fam in DETECTOR_FAMILIES:
            steps += _detector_steps(ctx, spec, roles, _expert_cost(ctx, spec, "detector"), seen)
        elif fam in VLM_FAMILIES:
            steps.append(_vlm_step(ctx, spec, roles, _expert_cost(ctx, spec, "vlm")))
        elif fam == "dino_head":
            steps.append(_unavailable_step(ctx, spec, roles, _expert_cost(ctx, spec, "classifier"),
                                           "fitting a DINOv2 head has no build step yet"))
        else:
            from natix_miner.preflight import missing_for

            fixes = "; ".join(f"{m.ref}: {m.fix.split(', or --stand-ins')[0]}" for m in missing_for(spec, ctx.profile))
            step = _unavailable_step(ctx, spec, roles, (0.0, 0.0),
                                     f"family {fam} is used as shipped, nothing to train: {fixes}")
            step.name = f"model:{spec.name}"
            steps.append(step)
    return steps


# ------------------------------------------------------------------------------------------------
# profile, calibrate, evaluate, report, install


def _ready_data(ctx: Context) -> dict:
    """The source profile's YAML with the new checkpoints (relative to OUT) and no fitted consensus."""
    import yaml

    data = yaml.safe_load(Path(ctx.profile.path).read_text())
    data.pop("build", None)  # the ready profile is built; its recipe stays in the source
    by_name = {e["name"]: e for e in data["experts"]}
    for name, change in ctx.checkpoints.items():
        entry = by_name[name]
        if "model" in change:
            entry["model"] = _rel(change["model"], ctx.out)
        opts = dict(entry.get("options") or {})
        for key in change.get("drop_options", []):
            opts.pop(key, None)
        for key, value in change.get("options", {}).items():
            opts[key] = _rel(value, ctx.out) if isinstance(value, Path) else value
        entry["options"] = opts
    data["description"] = (data.get("description", "") + " [built by natix-miner build]").strip()
    return data


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _recover_checkpoints(ctx: Context) -> None:
    """Steps skipped as done still name their checkpoints (read back from their markers)."""
    for marker in sorted((ctx.out / ".build").glob("train_*.json")):
        doc = json.loads(marker.read_text())
        for name, change in (doc.get("checkpoints") or {}).items():
            ctx.checkpoints.setdefault(name, {
                **({"model": ctx.out / change["model"]} if "model" in change else {}),
                "options": {k: (ctx.out / v["path"]) if isinstance(v, dict) and "path" in v else v
                            for k, v in change.get("options", {}).items()},
                "drop_options": change.get("drop_options", [])})


def _run_profile(ctx: Context) -> dict:
    import yaml

    from natix_miner.config import ProfileError, load_profile

    _recover_checkpoints(ctx)
    data = _ready_data(ctx)
    ctx.ready_path.write_text(f"# ready profile written by `natix-miner build` from {ctx.profile.path}\n"
                              + yaml.safe_dump(data, sort_keys=False))
    fitted = ctx.ready_path.with_name(ctx.ready_path.stem + ".consensus.json")
    if fitted.exists():
        fitted.unlink()  # a consensus fitted to older checkpoints
    try:
        load_profile(ctx.ready_path, stand_ins=False, device=False)
    except ProfileError as exc:
        raise BuildError(f"the ready profile does not validate: {exc}") from None
    return {"profile": str(ctx.ready_path), "trained": sorted(ctx.checkpoints)}


def _run_calibrate(ctx: Context) -> dict:
    import yaml

    from natix_miner.config import load_profile
    from natix_miner.training.calibrate import calibrate_profile, fit_escalation

    prof = load_profile(ctx.ready_path, stand_ins=False, device=False)
    methods = [ctx.spec.calibrate_method] + (["temperature"] if ctx.spec.calibrate_method != "temperature" else [])
    problems = []
    for method in methods:  # a model that learned nothing (tiny scale) cannot be fitted by logistic regression
        try:
            res = calibrate_profile(prof, ctx.data, samples=ctx.split("val"), seed=ctx.spec.seed + 1, method=method,
                                    holdout=0.0, all_levels=ctx.spec.all_levels, write=True,
                                    progress=ctx.progress, keep_evidence=True)
            break
        except ValueError as exc:
            problems.append(f"{method}: {exc}")
            log.warning("calibrate (%s) failed: %s", method, exc)
    else:
        fitted = ctx.ready_path.with_name(ctx.ready_path.stem + ".consensus.json")
        fitted.write_text(json.dumps({"normalize": True, "profile": prof.name, "skipped": problems}, indent=1))
        return {"consensus": str(fitted), "skipped": problems}
    out = {"consensus": res["path"], "method": method, "after": {k: round(res["metrics"]["after"][k], 4)
                                                                 for k in ("mcc", "accuracy", "reward_proxy")}}
    if problems:
        out["fallback_from"] = problems
    if ctx.spec.fit_escalation and len(prof.tiers) > 1:
        prof = load_profile(ctx.ready_path, stand_ins=False, device=False)  # with the fitted consensus
        band = fit_escalation(prof, res["evidence"], res["labels"])
        data = yaml.safe_load(ctx.ready_path.read_text())
        data["escalation"] = {"low": band["low"], "high": band["high"]}
        for tier in data["tiers"]:
            tier.pop("escalation", None)  # one band, fitted on the cascade as a whole
        ctx.ready_path.write_text(f"# ready profile written by `natix-miner build` from {ctx.profile.path}\n"
                                  + yaml.safe_dump(data, sort_keys=False))
        out["escalation"] = band
    return out


def _run_evaluate(ctx: Context) -> dict:
    from natix_miner.training.evaluate import evaluate_cascade_and_experts

    rep = evaluate_cascade_and_experts(ctx.ready_path, ctx.split("test"), seed=ctx.spec.seed + 2,
                                       all_levels=ctx.spec.all_levels, progress=ctx.progress,
                                       plots=ctx.out / "plots")
    if rep["gain_over_best_expert"] < 0.05:
        rep["why_not"] = cascade_gain_note(rep)
    rep["command"] = ctx.command
    (ctx.out / "evaluation.json").write_text(json.dumps(rep, indent=1, default=_json_default))
    c = rep["cascade"]["overall"]
    return {"cascade_mcc": round(c["mcc"], 4), "best_expert": rep["best_expert"],
            "gain_over_best_expert": round(rep["gain_over_best_expert"], 4)}


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _run_report(ctx: Context) -> dict:
    rep = json.loads((ctx.out / "evaluation.json").read_text())
    found = [json.loads(p.read_text()) for p in (ctx.out / ".build").glob("*.json")]
    markers = {m["step"]: m for m in sorted(found, key=lambda m: m.get("finished", ""))}
    text = format_build_report(ctx, rep, markers)
    (ctx.out / "report.md").write_text(text)
    return {"report": str(ctx.out / "report.md")}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_build_report(ctx: Context, rep: dict, markers: typing.Mapping[str, dict]) -> str:
    """The markdown build report: steps, the cascade against each expert alone, per tier / level / source."""
    levels = sorted({int(k) for r in [rep["cascade"]] + list(rep["experts"].values()) for k in r["per_level"]})
    lines = [f"# Build report: {ctx.profile.name}", "",
             f"Source profile `{ctx.profile.path}`, data `{ctx.data}`, scale `{ctx.scale}`, ready profile "
             f"`{ctx.ready_path.name}`. Held-out test: {rep['images']} images, {rep['n']} challenges "
             f"({'every image at all four levels' if rep['all_levels'] else 'levels balanced within each label'}), "
             f"seed {rep['seed']}.", "", "## Steps", "", "| step | seconds | result |", "| --- | --- | --- |"]
    for name, m in markers.items():
        if "hash" in m:
            lines.append(f"| {m.get('step', name)} | {m.get('seconds', 0):.0f} | "
                         f"{json.dumps(m.get('summary', {}), default=str)[:160]} |")
    head = "| | MCC | accuracy | reward | " + " | ".join(f"L{k} MCC" for k in levels) + " | real MCC | synthetic MCC |"
    lines += ["", "## Cascade against each expert alone", "",
              "The cascade runs through the engine (tiers, escalation, fitted consensus, deadlines); each "
              "expert alone is its own probability after a temperature calibration cross-fitted on the "
              "test images (two folds), so its threshold is as fair as the cascade's.", "",
              head, "|" + " --- |" * (6 + len(levels))]

    def row(name, r):
        o, lv, src = r["overall"], r["per_level"], r["per_source"]
        cells = " | ".join(_fmt(lv.get(str(k), lv.get(k, {})).get("mcc")) for k in levels)
        return (f"| {name} | {_fmt(o['mcc'])} | {_fmt(o['accuracy'])} | {_fmt(o['reward_proxy'])} | {cells} | "
                f"{_fmt(src.get('real', {}).get('mcc'))} | {_fmt(src.get('synthetic', {}).get('mcc'))} |")

    lines.append(row("**cascade**", rep["cascade"]))
    for name, r in rep["experts"].items():
        lines.append(row(f"{name} alone", r))
    for name, r in rep["tiers"].items():
        lines.append(row(f"stop after tier {name}", r))
    gain = rep["gain_over_best_expert"]
    lines += ["", f"Best single expert: **{rep['best_expert']}**; the cascade's MCC minus its: **{gain:+.3f}** "
                  f"({'meets' if gain >= 0.05 else 'misses'} the +0.05 target)."]
    if gain < 0.05:
        lines.append("")
        lines.append(rep.get("why_not", ""))
    cal = (markers.get("calibrate") or {}).get("summary") or {}
    if cal.get("skipped"):
        lines += ["", "## Consensus and escalation", "", "Not fitted: " + "; ".join(cal["skipped"])]
    elif cal:
        band = cal.get("escalation")
        lines += ["", "## Consensus and escalation", "",
                  f"Consensus fitted on the validation images ({Path(cal.get('consensus', '')).name}): "
                  f"after the fit MCC {cal['after']['mcc']:.3f}, accuracy {cal['after']['accuracy']:.3f}."]
        if band:
            lines += ["", f"Escalation band ({band['low']}, {band['high']}): MCC {band['mcc']:.3f} with "
                          f"{band['escalated']:.0%} of the validation challenges escalated; the candidates:", "",
                      "| low | high | MCC | escalated |", "| --- | --- | --- | --- |"]
            lines += [f"| {c['low']} | {c['high']} | {c['mcc']:.3f} | {c['escalated']:.0%} |"
                      for c in band["candidates"]]
    lat = rep["cascade"].get("latency_ms", {})
    lines += ["", "## Where the cascade stopped", "",
              f"Exits {rep['cascade']['exits']}; fallbacks {rep['cascade']['fallbacks'] or 'none'}; latency "
              f"p50 {lat.get('p50', 0):.0f} ms, p99 {lat.get('p99', 0):.0f} ms (this machine, "
              f"{rep.get('concurrency', 1)} in flight).", ""]
    for p in rep.get("plots", []):
        lines.append(f"![{Path(p).stem}](plots/{Path(p).name})")
    lines += ["", "Reproduce: `" + rep.get("command", "natix-miner build ...") + "`", ""]
    return "\n".join(lines)


def _run_install(ctx: Context) -> dict:
    """Copy the new checkpoints to the paths the source profile names, the consensus beside it, and the
    fitted escalation band into it (:func:`install_band`)."""
    import yaml

    from natix_miner.config import REPO_ROOT

    _recover_checkpoints(ctx)
    src_dir = Path(ctx.profile.path).parent
    copied = []
    for name, change in ctx.checkpoints.items():
        spec = ctx.profile.expert(name)
        pairs = []
        if "model" in change:
            pairs.append((Path(change["model"]), spec.model))
        if isinstance(change.get("options", {}).get("weights"), Path):
            pairs.append((change["options"]["weights"], spec.options.get("weights")))
        for new, target in pairs:
            if not target:
                continue
            dest = Path(target)
            if not dest.is_absolute():
                dest = (REPO_ROOT / dest) if (REPO_ROOT / dest.parts[0]).exists() else src_dir / dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            if new.is_dir():
                shutil.copytree(new, dest, dirs_exist_ok=True)
            else:
                shutil.copyfile(new, dest)
            copied.append(str(dest))
    fitted = ctx.ready_path.with_name(ctx.ready_path.stem + ".consensus.json")
    target = Path(ctx.profile.path).with_name(Path(ctx.profile.path).stem + ".consensus.json")
    shutil.copyfile(fitted, target)
    copied.append(str(target))
    for folder in sorted({Path(p).parent for p in copied[:-1]}):
        write_manifest(ctx, folder, [Path(p) for p in copied[:-1] if Path(p).parent == folder])
    out = {"installed": copied}
    band = (yaml.safe_load(ctx.ready_path.read_text()) or {}).get("escalation")
    if isinstance(band, dict) and (ctx.out / ".build" / "calibrate.json").exists():
        out["escalation"] = install_band(Path(ctx.profile.path), float(band["low"]), float(band["high"]))
    return out


BAND_COMMENT = "# fitted by `natix-miner build` (calibrate step)"


def install_band(path: Path, low: float, high: float) -> dict:
    """Write the fitted escalation band into the source profile ``path``, keeping its comments: the
    top-level ``escalation:`` (one line or a block) becomes ``{low, high}`` and one-line per-tier
    overrides go (the band was fitted on the cascade as a whole). Checked by parsing the result; a
    layout this edit cannot handle is rewritten whole (comments lost, said in the result)."""
    import re

    import yaml

    text = path.read_text()
    before = yaml.safe_load(text)
    line = f"escalation: {{low: {low:g}, high: {high:g}}}   {BAND_COMMENT}\n"
    top = re.compile(r"^escalation:[^\n]*\n(?:[ \t]+[^\n]*\n|[ \t]*\n(?=[ \t]))*", re.M)
    new = top.sub(lambda m: line, text, count=1) if top.search(text) else text.rstrip("\n") + "\n" + line
    new = re.sub(r"^[ \t]+escalation:[ \t]*\{[^}\n]*\}[^\n]*\n", "", new, flags=re.M)
    want = dict(before, escalation={"low": low, "high": high},
                tiers=[{k: v for k, v in t.items() if k != "escalation"} for t in before.get("tiers") or []])
    if yaml.safe_load(new) != want:
        new = "# rewritten by `natix-miner build` (the escalation band); comments were lost\n" + \
            yaml.safe_dump(want, sort_keys=False)
        kept = False
    else:
        kept = True
    path.write_text(new)
    return {"low": low, "high": high, "profile": str(path), "comments_kept": kept}


def write_manifest(ctx: Context, folder: Path, files: typing.Sequence[Path]) -> Path:
    """``folder/MANIFEST.json``'s ``build`` key: how the installed checkpoints were made (command,
    data, seeds, recipes), each file's sha256 and size, and the held-out figures. Other keys of an
    existing manifest are kept, and so are the records of files an earlier build installed that are
    still there unchanged (same sha256), each with the command and date that made it (also when this
    build installed the same bytes again)."""
    from natix_miner.training.hub import _sha256

    path = folder / "MANIFEST.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    ev = json.loads((ctx.out / "evaluation.json").read_text()) if (ctx.out / "evaluation.json").exists() else {}
    experts = {n: ctx.profile.expert(n) for n in ctx.checkpoints}
    entries = {}
    for f in files:
        if f.is_file():
            owner = next((n for n, e in experts.items() if Path(str(e.model or "")).name == f.name
                          or Path(str(e.options.get("weights", ""))).name == f.name), None)
            entries[f.name] = {"sha256": _sha256(f), "bytes": f.stat().st_size, "expert": owner,
                               "recipe": ctx.spec.recipe(owner).model_dump(exclude_defaults=True) if owner else None,
                               "command": ctx.command, "built": _now()}
    before = doc.get("build") or {}
    for name, e in (before.get("files") or {}).items():
        f = folder / name
        same = f.is_file() and e.get("sha256") == (entries[name]["sha256"] if name in entries else _sha256(f))
        if same:  # the same bytes: keep the command and date that made them (a re-install changes nothing)
            entries[name] = {**entries.get(name, e), "command": e.get("command", before.get("command")),
                             "built": e.get("built", before.get("built"))}
    sp = ctx.spec
    doc["build"] = {
        "command": ctx.command, "profile": ctx.profile.name, "data": ctx.data, "scale": ctx.scale,
        "seeds": {"train": sp.seed, "validation": sp.seed + 1, "test": sp.seed + 2} if _is_procedural(ctx.data)
        else {"split": sp.seed},
        "images": {"train": sp.train_images, "validation": sp.val_images, "test": sp.test_images},
        "files": entries, "built": _now(),
        "heldout": {"challenges": ev.get("n"), "cascade_mcc": ev.get("cascade", {}).get("overall", {}).get("mcc"),
                    "cascade_accuracy": ev.get("cascade", {}).get("overall", {}).get("accuracy"),
                    "experts_alone_mcc": {k: v["overall"]["mcc"] for k, v in ev.get("experts", {}).items()},
                    "report": str(ctx.out / "report.md")},
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


# ------------------------------------------------------------------------------------------------
# the graph


def scaled_spec(profile, scale: str):
    """The profile's ``build:`` section, capped for ``--scale tiny`` (CI: a few images and steps)."""
    spec = profile.build
    if scale == "tiny":
        spec = spec.model_copy(update={k: min(getattr(spec, k), TINY[k]) for k in ("train_images", "val_images",
                                                                                  "test_images")}
                               | {side: min(getattr(spec, side) or TINY["long_side"], TINY["long_side"])
                                  for side in ("long_side", "eval_long_side")})
    elif scale != "full":
        raise BuildError(f"--scale must be tiny or full, got {scale!r}")
    return spec


def plan(profile, data: str, out: typing.Union[str, Path], scale: str = "full", install: bool = False,
         progress: bool = True, retrain: typing.Sequence[str] = ()) -> typing.Tuple[Context, typing.List[Step]]:
    """The build's steps for ``profile`` (a loaded :class:`~natix_miner.config.Profile`), in order.

    ``retrain``: expert names (or ``all``) with a recipe in ``build.experts`` to train even though
    their checkpoint exists (rebuilding a shipped profile such as demo-cpu)."""
    if not profile.path:
        raise BuildError("the profile has no file (load it with config.load_profile)")
    unknown = sorted(set(retrain) - set(profile.build.experts) - {"all"})
    if unknown:
        raise BuildError(f"--retrain: {unknown} have no recipe under build.experts "
                         f"(recipes: {sorted(profile.build.experts)})")
    ctx = Context(profile=profile, data=str(data), out=Path(out), spec=scaled_spec(profile, scale), scale=scale,
                  progress=progress, install=install, retrain=tuple(retrain))
    sp = ctx.spec
    n_eval = sp.test_images * (4 if sp.all_levels else 1)
    n_experts = len(profile.tiered_experts)
    steps = [Step("data", "data", [], {"data": ctx.data, "sizes": [sp.train_images, sp.val_images, sp.test_images],
                                       "seed": sp.seed, "long_side": sp.long_side,
                                       "eval_long_side": sp.eval_long_side}, ["data.json"],
                  0.012 * (sp.train_images + sp.val_images + sp.test_images), run=_run_data,
                  note=f"train {sp.train_images}, validation {sp.val_images}, test {sp.test_images}")]
    trains = expert_steps(ctx)
    steps += trains
    names = [s.name for s in trains if not s.unavailable and s.kind == "train"]
    gpu = sp.device != "cpu" and any(not str(e.device).startswith("cpu") for e in profile.tiered_experts)
    per = 0.005 if gpu else 0.05  # seconds per challenge and expert (a rough figure)
    steps.append(Step("profile", "profile", ["data"] + names, {}, [ctx.ready_path.name], 1.0, run=_run_profile,
                      note=f"{ctx.ready_path.name} pointing at {len(names)} new checkpoint(s)"))
    steps.append(Step("calibrate", "calibrate", ["profile"], {"method": sp.calibrate_method,
                                                              "escalation": sp.fit_escalation},
                      [ctx.ready_path.stem + ".consensus.json"], per * 4 * sp.val_images * n_experts,
                      run=_run_calibrate, note=f"{sp.calibrate_method} consensus + escalation band on "
                                               f"{sp.val_images * (4 if sp.all_levels else 1)} validation challenges"))
    steps.append(Step("evaluate", "evaluate", ["calibrate"], {"all_levels": sp.all_levels},
                      ["evaluation.json"], per * 2 * n_eval * n_experts, run=_run_evaluate,
                      note=f"cascade vs each expert alone on {n_eval} held-out challenges"))
    steps.append(Step("report", "report", ["evaluate"], {}, ["report.md"], 2.0, run=_run_report,
                      note="report.md + plots/"))
    if install:
        steps.append(Step("install", "install", ["report"], {}, [], 1.0, run=_run_install,
                          note=f"checkpoints to the paths {Path(profile.path).name} names; consensus beside it; "
                               "the fitted escalation band into it"))
    return ctx, steps


def _hash(step: Step, done: typing.Mapping[str, str]) -> str:
    doc = {"step": step.name, "inputs": step.inputs, "needs": {n: done.get(n) for n in step.needs}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _now() -> str:
    """UTC time to the microsecond (a marker's identity for the steps that need it)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1e6) % 1000000:06d}Z"


def _marker(out: Path, step: Step) -> Path:
    return out / ".build" / (step.name.replace(":", "_") + ".json")


def format_plan(steps: typing.Sequence[Step], states: typing.Optional[typing.Mapping[str, str]] = None) -> str:
    """One line per step: name, state, estimated cost, what it does (``--dry-run``)."""
    lines = [f"{'step':<32}{'state':<16}{'est. time':>10}{'GPU GB':>8}  what"]
    total = 0.0
    for s in steps:
        state = (states or {}).get(s.name) or ("not available" if s.unavailable else "to run")
        total += 0 if s.unavailable else s.cost_s
        note = s.note + (f" [not available: {s.unavailable}]" if s.unavailable else "")
        lines.append(f"{s.name:<32}{state:<16}{_duration(s.cost_s):>10}{s.gpu_gb:>8.1f}  {note}")
    lines.append(f"{'total (to run)':<48}{_duration(total):>10}")
    return "\n".join(lines)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def states(ctx: Context, steps: typing.Sequence[Step]) -> typing.Dict[str, str]:
    """``done`` / ``to run`` / ``stale`` (done with other inputs) / ``not available`` per step."""
    done: typing.Dict[str, str] = {}
    out: typing.Dict[str, str] = {}
    for s in steps:
        h = _hash(s, done)
        m = _marker(ctx.out, s)
        if s.unavailable:
            out[s.name] = "not available"
            continue
        if m.exists():
            doc = json.loads(m.read_text())
            if doc.get("hash") == h and all((ctx.out / o).exists() for o in s.outputs):
                out[s.name] = "done"
                done[s.name] = f"{h}@{doc.get('finished')}"
                continue
            out[s.name] = "stale"
        else:
            out[s.name] = "to run"
        done[s.name] = f"{h}@pending"
    return out


def run_build(ctx: Context, steps: typing.Sequence[Step], only: typing.Optional[typing.Sequence[str]] = None,
              command: str = "") -> dict:
    """Run the steps in order, skipping those already done; returns ``{step: state or summary}``.

    A step whose trainer is not available is reported and skipped; so are the steps that need it
    when the profile cannot be made without it (the ready profile then keeps the missing model:
    ``--allow-degraded`` territory, said in the summary)."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / ".build").mkdir(exist_ok=True)
    done: typing.Dict[str, str] = {}
    summary: typing.Dict[str, typing.Any] = {}
    for s in steps:
        h = _hash(s, done)
        marker = _marker(ctx.out, s)
        if s.unavailable:
            summary[s.name] = f"not available: {s.unavailable}"
            print(f"[build] {s.name}: not available: {s.unavailable}", flush=True)
            continue
        if marker.exists():
            doc = json.loads(marker.read_text())
            if doc.get("hash") == h and all((ctx.out / o).exists() for o in s.outputs):
                done[s.name] = f"{h}@{doc.get('finished')}"  # a re-run upstream step re-runs what needs it
                summary[s.name] = "done (skipped)"
                print(f"[build] {s.name}: done, skipped", flush=True)
                continue
        if only and s.name not in only:
            summary[s.name] = "left out (--steps)"
            print(f"[build] {s.name}: left out by --steps", flush=True)
            continue
        missing = [n for n in s.needs if n not in done and not summary.get(n, "").startswith("not available")]
        if missing:
            raise BuildError(f"step {s.name} needs {', '.join(missing)}, not done: run it too (or drop --steps)")
        started = ctx.out / ".build" / (marker.stem + ".started")
        if s.kind == "train" and started.exists() and started.read_text().strip() != h:
            shutil.rmtree(_work(ctx, s.name.split(":", 1)[1]), ignore_errors=True)  # other inputs: start over
        started.write_text(h)
        if marker.exists():
            marker.unlink()
        print(f"[build] {s.name}: {s.note}", flush=True)
        t0 = time.time()
        ctx.command = command
        result = s.run(ctx) or {}
        doc = {"step": s.name, "hash": h, "seconds": round(time.time() - t0, 1), "summary": result,
               "finished": _now()}
        if s.kind == "train":
            name = s.name.split(":", 1)[1]
            change = ctx.checkpoints.get(name, {})
            doc["checkpoints"] = {name: {
                **({"model": _rel(change["model"], ctx.out)} if "model" in change else {}),
                "options": {k: ({"path": _rel(v, ctx.out)} if isinstance(v, Path) else v)
                            for k, v in change.get("options", {}).items()},
                "drop_options": change.get("drop_options", [])}}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
        tmp.replace(marker)
        started.unlink(missing_ok=True)
        done[s.name] = f"{h}@{doc['finished']}"
        summary[s.name] = result
        print(f"[build] {s.name}: done in {doc['seconds']:.0f} s: {json.dumps(result, default=str)[:200]}",
              flush=True)
    return summary


def cascade_gain_note(rep: dict) -> str:
    """Why the cascade does not beat its best expert by 0.05, from the evaluation's own numbers."""
    c = rep["cascade"]
    tiers = list(rep["tiers"])
    esc = 1.0 - c["exits"].get(tiers[0], 0) / max(1, rep["n"]) if tiers else 0.0
    steps = ", ".join(f"after {t}: {v['overall']['mcc']:.3f}" for t, v in rep["tiers"].items())
    return (f"Why not: {esc:.0%} of the challenges went past the first tier; the experts alone score "
            + ", ".join(f"{k} {v['overall']['mcc']:.3f}" for k, v in rep["experts"].items())
            + f"; the replayed cascade's MCC {steps}. A later tier can only add what its experts know "
            "that the first does not, on the images the first leaves uncertain." + _overlap_note(rep.get("errors")))


def _overlap_note(err: typing.Optional[dict]) -> str:
    """`` Mistakes (each alone, at 0.5): ...`` from :func:`~natix_miner.training.evaluate.error_overlap`."""
    if not err or len(err.get("experts", {})) < 2:
        return ""
    each = ", ".join(f"{k} {v}" for k, v in err["experts"].items())
    pairs = "; ".join(f"{k}: {v} shared" for k, v in err["pairs"].items())
    return (f" Mistakes on the {err['n']} challenges (each expert alone, at 0.5): {each}; {pairs}; "
            f"{err['all']} made by every expert, which no consensus of these experts can fix; the cascade "
            f"makes {err['cascade']}.")


