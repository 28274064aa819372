"""LoRA fine-tuning of a Qwen-VL model on the VLM tier's own yes/no question (``natix-miner train-vlm``).

The model is loaded exactly as the ``hf_vlm`` family serves it (same processor settings, chat
template, system prompt, question and answer words, :mod:`natix_miner.experts.vlm.prompt`), LoRA
adapters (peft) are added to its language model (or to every linear layer, ``target: all``), and
the loss is the cross-entropy of the answer ("yes" for roadwork, "no" otherwise) at the position
where the served expert reads P(yes), over the answer words (``loss: answer``, the served P(yes)
itself) or the whole vocabulary (``loss: vocab``). Every training image is a challenge as the miner
receives it: the validator's augmentation at a level drawn from ``levels``
(:mod:`natix_miner.synth.augment`), an optional flip and the JPEG round trip
(:func:`natix_miner.training.trainer.challenge_view`); each batch holds as many roadwork as
no-roadwork images (class-balanced sampling, with replacement, a pure function of
``(seed, step)``, so a resumed run draws what an uninterrupted one would).

Before training and after it, P(yes) is scored by the served code path
(:meth:`~natix_miner.experts.vlm.hf_backend.HFVisionLanguageExpert.score`) on a held-out split, each
image at one fixed augmentation level (levels balanced per label), and reported with
:func:`natix_miner.training.metrics.binary_metrics` (MCC as the validator rounds, per level too).

``OUT`` gets:

* ``last.pt`` every ``checkpoint_every`` steps (adapter weights, optimiser, step, history, RNG):
  ``resume=True`` continues from it (a finished run, ``report.json`` and ``merged/`` written,
  returns its report without loading anything);
* ``adapter/``: the LoRA adapters (``PeftModel.from_pretrained(base, OUT/adapter)``);
* ``merged/``: the adapters merged into the base weights plus the base's processor, tokenizer and
  chat template: a standard Hugging Face checkpoint directory that ``hf_vlm`` (transformers),
  ``vllm`` and ``openai_vlm`` (a vLLM server started on it) load like the base model;
* ``expert.yaml``: the ``hf_vlm`` profile entry for ``merged/``; ``report.json``: MCC before and
  after, loss history, paths.

Usage::

    from natix_miner.training.vlm_lora import train_vlm
    report = train_vlm("Qwen/Qwen2.5-VL-3B-Instruct", "data/roadwork", "runs/vlm", steps=500)
    report["before"]["mcc"], report["after"]["mcc"], report["merged"]

    natix-miner train-vlm --model Qwen/Qwen2.5-VL-3B-Instruct --data data/roadwork --out runs/vlm
"""

import json
import logging
import sys
import time
import typing
from pathlib import Path

import pydantic

from natix_miner.schema import StrictModel

log = logging.getLogger("natix_miner.training")

# LoRA on the language model only: attention and MLP projections of the text decoder (every
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL names them so); the vision tower keeps its weights.
LANGUAGE_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class VLMTrainConfig(StrictModel):
    """Settings of one ``train-vlm`` run (the command's flags map one to one)."""

    model: str
    """Base checkpoint: a local directory or a hub id of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL model."""
    data: str
    """Training data spec (:mod:`natix_miner.training.datasets`): a folder, CSV, NATIX parquet or ``procedural[:N[:SIDE]]``."""
    out: str
    """Run folder: ``last.pt``, ``adapter/``, ``merged/``, ``expert.yaml``, ``report.json``."""
    val: typing.Optional[str] = None
    """Held-out data spec; default: a stratified ``val_fraction`` split of ``data``."""
    val_fraction: float = pydantic.Field(default=0.15, gt=0, lt=1)
    """Share of ``data`` held out for the before / after MCC when ``val`` is not given."""
    limit: typing.Optional[int] = pydantic.Field(default=None, ge=2)
    """Use at most this many images of ``data`` (seeded, class-balanced)."""
    steps: int = pydantic.Field(default=200, ge=1)
    """Optimiser steps."""
    batch_size: int = pydantic.Field(default=4, ge=2)
    """Images per step, half roadwork and half not (an odd size gives the extra one to roadwork)."""
    lr: float = pydantic.Field(default=2e-4, gt=0)
    """Peak learning rate (linear warm-up, cosine decay to 1%)."""
    warmup_steps: int = pydantic.Field(default=10, ge=0)
    """Steps of linear warm-up."""
    weight_decay: float = pydantic.Field(default=0.0, ge=0)
    """AdamW weight decay on the adapter weights."""
    lora_r: int = pydantic.Field(default=16, ge=1)
    """LoRA rank."""
    lora_alpha: int = pydantic.Field(default=32, ge=1)
    """LoRA scaling numerator (the update is scaled by ``alpha / r``)."""
    lora_dropout: float = pydantic.Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA input."""
    loss: typing.Literal["answer", "vocab"] = "answer"
    """``answer``: cross-entropy over the answer words only (what P(yes) is computed from); ``vocab``:
    cross-entropy of "yes" / "no" over the whole vocabulary."""
    target: typing.Literal["language", "all"] = "language"
    """``language``: the text decoder's attention and MLP projections; ``all``: every linear layer
    (vision tower too) except the output head."""
    levels: typing.Tuple[int, ...] = (0, 1, 2, 3)
    """Validator augmentation levels drawn uniformly for training images (and spread over the held-out split)."""
    hflip: float = pydantic.Field(default=0.5, ge=0, le=1)
    """Probability of a horizontal flip of a training image."""
    eval_limit: typing.Optional[int] = pydantic.Field(default=None, ge=2)
    """Score at most this many held-out images (class-balanced); default: all of them."""
    eval_batch_size: int = pydantic.Field(default=8, ge=1)
    """Images per scoring forward pass."""
    checkpoint_every: int = pydantic.Field(default=50, ge=1)
    """Write ``last.pt`` every this many steps (and at the last one)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (large models on one card)."""
    device: str = pydantic.Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$")
    """``auto``: the first CUDA card when there is one, else the CPU."""
    dtype: typing.Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights during training and in ``merged/``; ``auto``: bfloat16 on a card, float32 on the CPU."""
    options: typing.Dict[str, typing.Any] = pydantic.Field(default_factory=dict)
    """The ``hf_vlm`` options the trained expert will serve with (``question``, ``system_prompt``,
    ``yes_words``, ``max_pixels``, ...; :class:`~natix_miner.experts.vlm.prompt.VLMOptions`): the model
    is trained on exactly that prompt, and ``expert.yaml`` carries them."""
    name: str = pydantic.Field(default="vlm_lora", pattern=r"^[A-Za-z0-9_.-]+$")
    """Expert name in ``expert.yaml``."""
    seed: int = 0
    """Seeds the split, the sampling, the augmentation and the LoRA initialisation."""
    progress: bool = True
    """Print one line per logged step."""


class VLMTrainingError(RuntimeError):
    """The run cannot start or continue; the message says what to change."""


# ------------------------------------------------------------------------------------------------
# pieces


def balanced_batch(labels: typing.Sequence[int], step: int, batch_size: int, seed: int) -> typing.List[int]:
    """Indices of one class-balanced batch (``ceil(B/2)`` roadwork, ``floor(B/2)`` not), drawn with
    replacement from a generator seeded by ``(seed, step)``: a pure function of the step."""
    import numpy as np

    pos = [i for i, y in enumerate(labels) if y == 1]
    neg = [i for i, y in enumerate(labels) if y == 0]
    if not pos or not neg:
        raise VLMTrainingError(f"training data must contain both classes (roadwork {len(pos)}, none {len(neg)})")
    rng = np.random.default_rng([seed, 7, step])
    k = (batch_size + 1) // 2
    idx = [pos[j] for j in rng.integers(0, len(pos), k)] + [neg[j] for j in rng.integers(0, len(neg), batch_size - k)]
    rng.shuffle(idx)
    return [int(i) for i in idx]


def _resolve_dtype(cfg: VLMTrainConfig, device: str) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def make_expert(model: str, options: typing.Mapping[str, typing.Any], device: str, dtype: str,
                name: str = "vlm_lora"):
    """The ``hf_vlm`` expert, constructed: options validated (a bad key is named), nothing loaded."""
    from natix_miner.config import ExpertSpec
    from natix_miner.experts import create_expert

    spec = ExpertSpec(name=name, family="hf_vlm", model=model, device=device, dtype=dtype, options=dict(options))
    return create_expert(spec)


def load_expert(model: str, options: typing.Mapping[str, typing.Any], device: str, dtype: str,
                name: str = "vlm_lora", expert=None):
    """The ``hf_vlm`` expert of ``model`` with ``options``, loaded: the code path the miner serves
    (``expert``: one :func:`make_expert` already constructed)."""
    from natix_miner.models_store import ModelUnavailable

    expert = expert or make_expert(model, options, device, dtype, name)
    try:
        expert.load(device)
    except ModelUnavailable:
        raise
    except (OSError, ValueError, KeyError) as exc:  # no config / processor / weights, or not a VLM
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VLMTrainingError(f"{model}: not loadable as a Qwen-VL checkpoint by hf_vlm ({first})") from None
    return expert


def score_views(expert, views: typing.Sequence[typing.Any], batch_size: int = 8):
    """P(yes) of each PIL view through the expert's own scoring (restricted softmax over the answer
    words at the generation prompt), as a numpy array; an image with no answer mass scores 0.5."""
    import numpy as np

    out: typing.List[float] = []
    for i in range(0, len(views), batch_size):
        chunk = list(views[i:i + batch_size])
        for p, _ in expert.score([expert.prompt_direct] * len(chunk), chunk):
            out.append(0.5 if p is None else expert.opts.calibrate(p))
    return np.asarray(out, dtype=np.float64)


def evaluate_views(expert, views, labels, levels, batch_size: int = 8) -> dict:
    """``binary_metrics`` of P(yes) on fixed held-out views, with ``per_level``."""
    import numpy as np

    from natix_miner.training.trainer import evaluate_split

    probs = score_views(expert, views, batch_size)
    m = evaluate_split(probs, np.asarray(labels, np.int64), np.asarray(levels, np.int64))
    m["mean_p_yes"] = {"roadwork": float(probs[np.asarray(labels) == 1].mean()),
                       "none": float(probs[np.asarray(labels) == 0].mean())}
    return m


def answer_loss(expert, views, labels, loss: str = "answer"):
    """Loss of the answer token at the last position of the served prompt, and the batch's P(yes).

    ``answer``: cross-entropy of the label's answer over the answer words only (the restricted
    softmax the expert serves as P(yes): yes words against no words); ``vocab``: cross-entropy of
    the label's first answer word ("yes" / "no") over the whole vocabulary (also raises the answer
    words' share of the next-token mass)."""
    import torch

    ids = expert.answers.ids()
    n_yes = len(expert.answers.yes)
    inputs = expert._inputs([expert.prompt_direct] * len(views), views)
    logits = expert.model(**inputs).logits[:, -1, :].float()
    y = torch.tensor([int(v) for v in labels], device=logits.device)
    restricted = torch.log_softmax(logits[:, ids], dim=-1)
    log_yes = torch.logsumexp(restricted[:, :n_yes], dim=-1)
    log_no = torch.logsumexp(restricted[:, n_yes:], dim=-1)
    if loss == "answer":
        value = -torch.where(y == 1, log_yes, log_no).mean()
    else:
        target = torch.where(y == 1, torch.tensor(ids[0], device=y.device), torch.tensor(ids[n_yes], device=y.device))
        value = torch.nn.functional.cross_entropy(logits, target)
    return value, log_yes.detach().exp().cpu().numpy()


def _lora(expert, cfg: VLMTrainConfig):
    from peft import LoraConfig, get_peft_model

    target = LANGUAGE_TARGETS if cfg.target == "language" else "all-linear"
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target, bias="none")
    if cfg.gradient_checkpointing:
        expert.model.gradient_checkpointing_enable()
        expert.model.enable_input_require_grads()
    try:
        model = get_peft_model(expert.model, lcfg)
    except ValueError as exc:  # no module matched: not a Qwen-VL layout
        raise VLMTrainingError(f"{cfg.model}: no LoRA target found ({exc}); train-vlm supports Qwen2-VL, "
                               "Qwen2.5-VL and Qwen3-VL checkpoints (or try --target all)") from None
    expert.model = model
    return model


def _held_out_views(samples, levels, seed: int):
    """Each held-out image once, at a fixed level (levels spread evenly within each label)."""
    from natix_miner.training.trainer import AugmentedDataset

    ds = AugmentedDataset(samples, None, None, None, levels, 0.0, seed, train=False)
    views, labels, lv = [], [], []
    for i in range(len(ds)):
        v, y, level = ds.view(i)
        views.append(v)
        labels.append(y)
        lv.append(level)
    return views, labels, lv


def _expert_yaml(cfg: VLMTrainConfig, merged: Path) -> str:
    import yaml

    entry = {"name": cfg.name, "family": "hf_vlm", "model": str(merged.resolve()), "device": "auto",
             "dtype": "auto" if cfg.dtype == "auto" else cfg.dtype, "max_batch": 4}
    if cfg.options:
        entry["options"] = dict(cfg.options)
    return yaml.safe_dump([entry], sort_keys=False)


def _save_merged(model, cfg: VLMTrainConfig, base_path: str, merged: Path) -> None:
    """Adapters folded into the base weights, saved with the base model's own processor files."""
    from transformers import AutoProcessor

    full = model.merge_and_unload()
    merged.mkdir(parents=True, exist_ok=True)
    full.save_pretrained(merged)
    proc = AutoProcessor.from_pretrained(base_path)  # unmodified: the served options resize at load time
    proc.save_pretrained(merged)
    proc.tokenizer.save_pretrained(merged)
    template = getattr(proc, "chat_template", None) or getattr(proc.tokenizer, "chat_template", None)
    if template:
        (merged / "chat_template.jinja").write_text(template)


# ------------------------------------------------------------------------------------------------
# the run


def train_vlm(model: str, data: str, out: str, steps: int = 200, resume: bool = False,
              train_samples=None, val_samples=None, **settings) -> dict:
    """Fine-tune ``model`` with LoRA on ``data``; write ``OUT`` (see the module docstring); return the
    report (also ``OUT/report.json``): ``before`` / ``after`` metrics of the held-out split
    (``mcc``, ``accuracy``, ``per_level``, ...), ``history`` (step, loss, lr), ``adapter``, ``merged``,
    ``expert_yaml``, ``seconds``.

    ``settings`` are the other :class:`VLMTrainConfig` fields. ``train_samples`` / ``val_samples``
    (lists of :class:`~natix_miner.training.datasets.Sample`) replace reading ``data`` / ``val``."""
    try:
        cfg = VLMTrainConfig(model=model, data=data, out=out, steps=steps, **settings)
    except pydantic.ValidationError as exc:
        raise VLMTrainingError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    return _run(cfg, resume, train_samples, val_samples)


def _split(cfg: VLMTrainConfig, train_samples, val_samples):
    from natix_miner.training.datasets import balanced_subset, load_samples, split_samples

    if train_samples is None:
        samples = load_samples(cfg.data, limit=cfg.limit, seed=cfg.seed, labelled=True)
        if cfg.val:
            train_samples, val_samples = samples, load_samples(cfg.val, seed=cfg.seed, labelled=True)
        else:
            train_samples, val_samples = split_samples(samples, cfg.val_fraction, seed=cfg.seed)
    elif val_samples is None:
        train_samples, val_samples = split_samples(train_samples, cfg.val_fraction, seed=cfg.seed)
    if cfg.eval_limit is not None and len(val_samples) > cfg.eval_limit:
        val_samples = balanced_subset(val_samples, cfg.eval_limit, cfg.seed)
    return list(train_samples), list(val_samples)


def _run(cfg: VLMTrainConfig, resume: bool, train_samples, val_samples) -> dict:
    import numpy as np
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from natix_miner.training.trainer import _atomic_save, lr_at, resolve_device

    out = Path(cfg.out)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise VLMTrainingError(f"{last} exists: pass --resume to continue, or choose another --out")
    if any(lv not in (0, 1, 2, 3) for lv in cfg.levels) or not cfg.levels:
        raise VLMTrainingError(f"levels must be among 0..3, got {list(cfg.levels)}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ck = torch.load(last, map_location="cpu", weights_only=False) if resume and last.exists() else None
    if ck is not None and ck["config"] != cfg.model_dump(exclude={"progress"}):
        changed = sorted(k for k, v in cfg.model_dump(exclude={"progress"}).items() if ck["config"].get(k) != v)
        raise VLMTrainingError(f"{last} was written with other settings ({', '.join(changed)}); "
                               "resume with the same flags, or choose another --out")
    done = out / "report.json"
    if ck is not None and ck["step"] >= cfg.steps and done.exists() and (out / "merged" / "config.json").exists():
        _say(cfg, f"{out}: already trained ({cfg.steps} steps, merged checkpoint written); nothing to do")
        return json.loads(done.read_text())
    device = resolve_device(cfg.device)
    dtype = _resolve_dtype(cfg, device)
    expert = make_expert(cfg.model, cfg.options, device, dtype, cfg.name)  # bad options fail first
    train_s, val_s = _split(cfg, train_samples, val_samples)
    labels = [int(s.label) for s in train_s]
    balanced_batch(labels, 0, cfg.batch_size, cfg.seed)  # both classes present, before any weight loads

    expert = load_expert(cfg.model, cfg.options, device, dtype, cfg.name, expert=expert)
    base_path = expert.resolve_model()
    views, vlabels, vlevels = _held_out_views(val_s, cfg.levels, cfg.seed)
    if ck is None:
        before = evaluate_views(expert, views, vlabels, vlevels, cfg.eval_batch_size)
        _say(cfg, f"before: P(yes) MCC {before['mcc']:.3f} acc {before['accuracy']:.3f} on {len(views)} held-out "
                  f"images (mean P(yes) roadwork {before['mean_p_yes']['roadwork']:.3f}, "
                  f"none {before['mean_p_yes']['none']:.3f})")
    else:
        before = ck["before"]

    torch.manual_seed(cfg.seed)
    model = _lora(expert, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    if ck is not None:
        set_peft_model_state_dict(model, ck["adapter"])
        opt.load_state_dict(ck["optimizer"])
        start, history = int(ck["step"]), list(ck["history"])
        torch.set_rng_state(ck["torch_rng"])
        _say(cfg, f"resumed from {last} at step {start + 1}/{cfg.steps}")

    from natix_miner.training.trainer import AugmentedDataset

    pool = AugmentedDataset(train_s, None, None, None, cfg.levels, cfg.hflip, cfg.seed, train=True)
    model.train()
    for step in range(start, cfg.steps):
        pool.epoch = step  # the augmentation of image i at this step: seeded by (seed, step, i)
        idx = balanced_batch(labels, step, cfg.batch_size, cfg.seed)
        t_step = time.perf_counter()
        batch = [pool.view(i) for i in idx]
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, p_yes = answer_loss(expert, [b[0] for b in batch], [b[1] for b in batch], cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        y = np.asarray([b[1] for b in batch])
        history.append({"step": step + 1, "loss": float(loss.item()), "lr": lr,
                        "seconds": round(time.perf_counter() - t_step, 3),  # augmentation + forward + backward
                        "p_yes_roadwork": float(p_yes[y == 1].mean()), "p_yes_none": float(p_yes[y == 0].mean())})
        if cfg.progress and (step == start or (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps):
            h = history[-1]
            _say(cfg, f"step {step + 1}/{cfg.steps} loss {h['loss']:.4f} lr {lr:.2e} "
                      f"P(yes) roadwork {h['p_yes_roadwork']:.3f} none {h['p_yes_none']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _atomic_save({"config": cfg.model_dump(exclude={"progress"}), "step": step + 1, "history": history,
                          "adapter": get_peft_model_state_dict(model), "optimizer": opt.state_dict(),
                          "torch_rng": torch.get_rng_state(), "before": before}, last)

    model.eval()
    after = evaluate_views(expert, views, vlabels, vlevels, cfg.eval_batch_size)
    _say(cfg, f"after:  P(yes) MCC {after['mcc']:.3f} acc {after['accuracy']:.3f} (before {before['mcc']:.3f}; "
              f"mean P(yes) roadwork {after['mean_p_yes']['roadwork']:.3f}, none {after['mean_p_yes']['none']:.3f})")
    adapter, merged = out / "adapter", out / "merged"
    model.save_pretrained(adapter)
    _save_merged(model, cfg, base_path, merged)
    (out / "expert.yaml").write_text(_expert_yaml(cfg, merged))
    report = {"model": cfg.model, "data": cfg.data, "device": device, "dtype": dtype, "steps": cfg.steps,
              "train": len(train_s), "held_out": len(views), "before": before, "after": after,
              "history": history, "adapter": str(adapter), "merged": str(merged),
              "expert_yaml": str(out / "expert.yaml"), "seconds": round(time.perf_counter() - t0, 1),
              "config": cfg.model_dump()}
    done.write_text(json.dumps(report, indent=1, default=float))
    return report


def _say(cfg: VLMTrainConfig, msg: str) -> None:
    log.info(msg)
    if cfg.progress:
        print(msg, flush=True)


# ------------------------------------------------------------------------------------------------
# command


def _field_help(name: str) -> str:
    """A flag's help: the config field's docstring, reST markup dropped."""
    import re

    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", VLMTrainConfig.model_fields[name].description or "")
    return " ".join(text.replace("``", "'").split()).replace("%", "%%")


def add_parser(sub) -> None:
    fields = VLMTrainConfig.model_fields
    p = sub.add_parser("train-vlm", help="LoRA fine-tuning of a Qwen-VL model on the VLM tier's yes/no question",
                       description=__doc__.split("\n\n")[0])
    for flag in ("model", "data", "out"):
        p.add_argument(f"--{flag}", required=True, help=_field_help(flag))
    flags = {"val": str, "val_fraction": float, "limit": int, "eval_limit": int, "steps": int, "batch_size": int,
             "lr": float, "warmup_steps": int, "weight_decay": float, "lora_r": int, "lora_alpha": int,
             "lora_dropout": float, "checkpoint_every": int, "eval_batch_size": int, "name": str, "seed": int}
    alias = {"limit": "--n", "eval_limit": "--eval-n"}
    for field, kind in flags.items():
        p.add_argument(alias.get(field, "--" + field.replace("_", "-")), dest=field, type=kind,
                       default=fields[field].default, help=_field_help(field))
    for field in ("loss", "target", "dtype"):
        p.add_argument(f"--{field}", choices=list(typing.get_args(fields[field].annotation)),
                       default=fields[field].default, help=_field_help(field))
    p.add_argument("--levels", default="0,1,2,3", help=_field_help("levels") + " Comma list.")
    p.add_argument("--no-hflip", action="store_true", help="no horizontal flips (default: half the images)")
    p.add_argument("--gradient-checkpointing", action="store_true", help=_field_help("gradient_checkpointing"))
    p.add_argument("--device", default="auto", help=_field_help("device"))
    p.add_argument("--options", default=None,
                   help="hf_vlm options as JSON, e.g. '{\"max_pixels\": 200704}': " + _field_help("options"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same flags)")
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    p.set_defaults(func=cmd_train_vlm)


def cmd_train_vlm(args) -> int:
    from natix_miner.experts.vlm.prompt import VLMOptionError
    from natix_miner.models_store import ModelUnavailable
    from natix_miner.schema import OptionsError
    from natix_miner.training.datasets import DataError

    try:
        options = json.loads(args.options) if args.options else {}
        levels = tuple(int(x) for x in str(args.levels).split(",") if x.strip())
    except ValueError as exc:
        print(f"error: --options must be a JSON object and --levels a comma list of 0..3 ({exc})", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = {f: getattr(args, f) for f in VLMTrainConfig.model_fields
                    if f not in ("model", "data", "out", "steps", "levels", "hflip", "options", "progress")}
        rep = train_vlm(args.model, args.data, args.out, steps=args.steps, resume=args.resume, levels=levels,
                        hflip=0.0 if args.no_hflip else 0.5, options=options, progress=not args.quiet, **settings)
    except (VLMTrainingError, DataError, VLMOptionError, OptionsError, ModelUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume ({args.out}/last.pt)", file=sys.stderr)
        return 130
    print(f"P(yes) MCC on {rep['held_out']} held-out images: before {rep['before']['mcc']:.3f}, "
          f"after {rep['after']['mcc']:.3f}; merged checkpoint {rep['merged']}; profile entry {rep['expert_yaml']}")
    return 0
