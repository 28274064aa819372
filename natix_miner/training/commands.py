"""``natix-miner`` subcommands of the training room (parsers here, work in the sibling modules).

    natix-miner data pull --out data/roadwork [--token T | HF_TOKEN] [--from LOCAL_PARQUET]
    natix-miner data validate DATA [--json report.json] [--strict]
    natix-miner train --data DATA --out runs/x [--arch A --weights W --epochs N --resume ...]
    natix-miner autolabel --data DATA --teachers grounding_dino,owlv2 --out runs/boxes [--measure]
    natix-miner train-detector --coco ann.json --out runs/det [--family ultralytics|rfdetr|hf_detector --model M]
    natix-miner calibrate --profile P --data DATA [--method logistic|temperature|isotonic]
    natix-miner evaluate --profile P [--profile P2 | --compare P2] --data DATA [--n N] [--json PATH]
    natix-miner hard-examples --profile P --data DATA --out hard/ [--top 200]
    natix-miner distill --teacher P --data DATA --out data/distilled [--train ...]

DATA is a folder (``roadwork/`` + ``none/``, or a ``labels.csv``), a CSV, a parquet file or
folder in the NATIX schema, or ``procedural[:N]``. Exit status: 0 done, 1 the data or the result
failed a check, 2 bad input.
"""

import json
import sys


def add_parser(sub) -> None:
    _data(sub)
    _train(sub)
    _train_detector(sub)
    _calibrate(sub)
    _evaluate(sub)
    _hard(sub)
    _distill(sub)


# ------------------------------------------------------------------------------------------------
# parsers


def _common(p, data_required: bool = True) -> None:
    p.add_argument("--data", required=data_required, help="folder, .csv, .parquet, pulled dataset dir, or procedural[:N]")
    p.add_argument("--n", type=int, default=None, help="use at most N images (seeded, class-balanced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _data(sub) -> None:
    p = sub.add_parser("data", help="pull or validate training data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    pull = dsub.add_parser("pull", help="fetch the NATIX roadwork dataset (parquet) from Hugging Face")
    pull.add_argument("--out", required=True, help="target folder (data/, raw/, manifest.json)")
    pull.add_argument("--repo", default=None, help="dataset id (default natix-network-org/roadwork)")
    pull.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the stored login)")
    pull.add_argument("--revision", default=None)
    pull.add_argument("--from", dest="source", default=None, help="ingest a local parquet file/folder instead")
    pull.set_defaults(func=cmd_pull)
    val = dsub.add_parser("validate", help="corrupt files, near-duplicates, label balance, sizes")
    val.add_argument("data", help="folder, .csv, .parquet or pulled dataset dir")
    val.add_argument("--json", default=None, help="write the full report here")
    val.add_argument("--max-distance", type=int, default=4, help="perceptual-hash bits for near-duplicates")
    val.add_argument("--min-share", type=float, default=0.3, help="minority class share below which to warn")
    val.add_argument("--min-side", type=int, default=64, help="warn about images smaller than this")
    val.add_argument("--unlabelled", action="store_true", help="do not require labels")
    val.add_argument("--strict", action="store_true", help="warnings fail too")
    val.add_argument("--n", type=int, default=None)
    val.add_argument("--quiet", action="store_true")
    val.set_defaults(func=cmd_validate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _train_args(p) -> None:
    p.add_argument("--family", default="timm", choices=["timm", "transformers", "hf_classifier"])
    p.add_argument("--arch", "--model", dest="model", default="tf_efficientnet_lite0",
                   help="timm architecture, or a transformers model folder")
    p.add_argument("--weights", default=None, help="timm: package:efficientnet_lite0 or a weights file")
    p.add_argument("--name", default=None, help="expert name in the exported profile entry")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--levels", default="0,1,2,3", help="validator augmentation levels to train on")
    p.add_argument("--no-hflip", action="store_true")
    p.add_argument("--no-class-weights", action="store_true")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--freeze-backbone", action="store_true", help="train the classifier head only")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--keep-epochs", action="store_true", help="also keep a checkpoint per epoch")
    p.add_argument("--val-fraction", type=float, default=0.15, help="validation share when no --val is given")


def _train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier expert with the validator's augmentation")
    _common(p)
    p.add_argument("--val", default=None, help="validation DATA (default: a stratified split of --data)")
    p.add_argument("--out", required=True, help="run folder (last.pt, best.pth, expert.yaml, history.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    _train_args(p)
    p.set_defaults(func=cmd_train)


def _train_detector(sub) -> None:
    p = sub.add_parser("train-detector", help="train a detector (ultralytics, rfdetr, hf_detector, timm_det) on COCO "
                                              "roadwork boxes")
    p.add_argument("--coco", required=True, help="COCO instances JSON (natix-miner autolabel writes OUT/coco/instances.json)")
    p.add_argument("--images", default=None, help="image folder (default: beside the JSON)")
    p.add_argument("--out", required=True)
    p.add_argument("--family", default="ultralytics", choices=["ultralytics", "rfdetr", "hf_detector", "timm_det"])
    p.add_argument("--model", default="yolo11n.yaml",
                   help="ultralytics: bundled yaml or local .pt; rfdetr: nano|small|medium|large or local .pth; "
                        "hf_detector: d_fine|rt_detr_v2 or a local save_pretrained dir; timm_det: a timm architecture "
                        "(tf_efficientnet_lite0)")
    p.add_argument("--arch", default="auto", choices=["auto", "yolo", "rtdetr"], help="ultralytics model class")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the family's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--class-map", default=None, help='JSON {"coco category": "cone" | null, ...}')
    p.add_argument("--augment-copies", type=int, default=1,
                   help="validator-augmented copies of each training image (boxes moved along)")
    p.add_argument("--levels", default="0,1,2,3", help="validator levels of the image-level score ('' skips it)")
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="rfdetr constructor / hf_detector config keyword / timm_det init, width, freeze_blocks, "
                        "warmup_steps (YAML value); repeat")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--name", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_detector)


def _calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the consensus so that 0.5 is the MCC-best threshold")
    _common(p)
    p.add_argument("--profile", required=True)
    p.add_argument("--method", default="logistic", choices=["logistic", "temperature", "isotonic"],
                   help="logistic: fit weights + bias; temperature / isotonic: keep the weights")
    p.add_argument("--holdout", type=float, default=0.25, help="share of images kept out for before/after")
    p.add_argument("--all-levels", action="store_true", help="every image at all four levels")
    p.add_argument("--allow-negative", action="store_true", help="allow negative expert weights")
    p.add_argument("--dry-run", action="store_true", help="report, do not write the consensus file")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_calibrate)


def _evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="profiles on validator-style challenges: MCC, accuracy, reward")
    _common(p)
    p.add_argument("--profile", action="append", required=True, help="repeat to compare profiles")
    p.add_argument("--compare", action="append", default=[], help="another profile, side by side")
    p.add_argument("--json", default=None)
    p.add_argument("--plots", default=None, help="folder for reliability / PR / threshold PNGs")
    p.add_argument("--all-levels", action="store_true", help="every image at all four levels")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight in the engine")
    from natix_miner.commands.predict import add_load_flags

    add_load_flags(p)
    from natix_miner.standins import add_arguments

    add_arguments(p)  # --stand-ins DIR, --device D (applied where the profile loads)
    p.set_defaults(func=cmd_evaluate)


def _hard(sub) -> None:
    p = sub.add_parser("hard-examples", help="rank images by uncertainty and disagreement, export them")
    _common(p)
    p.add_argument("--profile", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--top", type=int, default=100)
    p.add_argument("--fiftyone-name", default=None, help="FiftyOne dataset name (when fiftyone is installed)")
    p.set_defaults(func=cmd_hard)


def _distill(sub) -> None:
    p = sub.add_parser("distill", help="label images with a heavy profile; optionally train a fast expert")
    _common(p)
    p.add_argument("--teacher", required=True, help="profile that labels")
    p.add_argument("--out", required=True, help="labelled folder to write (roadwork/, none/, labels.csv)")
    p.add_argument("--low", type=float, default=0.2)
    p.add_argument("--high", type=float, default=0.8)
    p.add_argument("--train", dest="train_out", default=None, metavar="RUN_DIR",
                   help="then train a fast expert on the labels into RUN_DIR")
    p.add_argument("--val", default=None, help="labelled validation DATA for the student")
    _train_args(p)
    p.set_defaults(func=cmd_distill)


# ------------------------------------------------------------------------------------------------
# commands


def _setup(args) -> None:
    from natix_miner.config import LoggingConfig
    from natix_miner.ops.logs import setup_logging

    setup_logging(LoggingConfig(level="INFO"))
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _err(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _dump(obj, path) -> None:
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def cmd_pull(args) -> int:
    from natix_miner.training.hub import DATASET_ID, DatasetError, pull

    try:
        m = pull(args.out, repo_id=args.repo or DATASET_ID, token=args.token, revision=args.revision,
                 source=args.source)
    except DatasetError as exc:
        return _err(str(exc), 1)
    print(f"{m['dataset']}: {m['rows']} rows in {len(m['files'])} file(s), labels {m['labels']} -> "
          f"{args.out}/manifest.json")
    return 0


def cmd_validate(args) -> int:
    from natix_miner.training.datasets import DataError, load_samples
    from natix_miner.training.validate import format_validation, validate_samples

    try:
        samples = load_samples(args.data, limit=args.n)
    except DataError as exc:
        return _err(str(exc))
    r = validate_samples(samples, max_distance=args.max_distance, min_share=args.min_share,
                         min_side=args.min_side, labelled=not args.unlabelled, progress=not args.quiet)
    if args.strict and r["warnings"]:
        r["ok"] = False
    print(format_validation(r))
    if args.json:
        _dump(r, args.json)
    return 0 if r["ok"] else 1


def _train_config(args, out: str):
    from natix_miner.training.trainer import TrainConfig

    levels = tuple(int(x) for x in str(args.levels).split(",") if x.strip())
    if not levels or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise ValueError(f"--levels must be a comma list of 0..3, got {args.levels!r}")
    return TrainConfig(out=out, family=args.family, model=args.model, weights=args.weights, name=args.name,
                       image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                       label_smoothing=args.label_smoothing, class_weighting=not args.no_class_weights,
                       levels=levels, hflip=0.0 if args.no_hflip else 0.5, amp=not args.no_amp,
                       device=args.device, workers=args.workers, seed=args.seed,
                       max_steps_per_epoch=args.max_steps_per_epoch, freeze_backbone=args.freeze_backbone,
                       keep_epochs=args.keep_epochs)


def _run_training(args, data: str, out: str, val=None) -> int:
    from natix_miner.training.datasets import DataError, label_counts, load_samples, split_samples
    from natix_miner.training.trainer import TrainingError, train

    try:
        cfg = _train_config(args, out)
        samples = load_samples(data, limit=args.n, seed=args.seed, labelled=True)
        if val:
            tr, va = samples, load_samples(val, seed=args.seed, labelled=True)
        else:
            tr, va = split_samples(samples, args.val_fraction, seed=args.seed)
    except (DataError, ValueError) as exc:
        return _err(str(exc))
    print(f"train {label_counts(tr)}, validation {label_counts(va)}", flush=True)
    try:
        res = train(cfg, tr, va, resume=getattr(args, "resume", False))
    except TrainingError as exc:
        return _err(str(exc), 1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume (checkpoint {out}/last.pt)",
              file=sys.stderr)
        return 130
    b = res["best"] or {}
    print(f"best epoch {res['best_epoch']}: MCC {b.get('mcc', 0):.3f} acc {b.get('accuracy', 0):.3f} "
          f"reward {b.get('reward_proxy', 0):.3f}; profile entry in {out}/expert.yaml")
    return 0


def cmd_train(args) -> int:
    _setup(args)
    return _run_training(args, args.data, args.out, args.val)


def _key_values(items) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-option {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_train_detector(args) -> int:
    import pydantic

    from natix_miner.training.coco import CocoError
    from natix_miner.training.detector import DetectorConfig, DetectorTrainingError, train_detector

    try:
        cmap = json.loads(args.class_map) if args.class_map else None
        levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
        cfg = DetectorConfig(coco=args.coco, images=args.images, out=args.out, family=args.family, model=args.model,
                             arch=args.arch, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, lr=args.lr,
                             device=args.device, workers=args.workers, amp=not args.no_amp, seed=args.seed,
                             val_fraction=args.val_fraction, class_map=cmap, augment_copies=args.augment_copies,
                             eval_levels=levels, resume=args.resume, name=args.name,
                             model_options=_key_values(args.model_option))
    except pydantic.ValidationError as exc:
        e = exc.errors()[0]
        key = str(e["loc"][0])
        flag = {"eval_levels": "levels", "model_options": "model-option", "amp": "no-amp"}.get(key, key.replace("_", "-"))
        return _err(f"--{flag}: {e['msg'].removeprefix('Value error, ')}")
    except (ValueError, json.JSONDecodeError) as exc:
        return _err(str(exc))
    try:
        res = train_detector(cfg)
    except (CocoError, DetectorTrainingError) as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with the same command plus --resume (run folder {args.out})", file=sys.stderr)
        return 130
    print(f"boxes {res['boxes']} (dropped {res['dropped']}); split {res['split']}; metrics {res['metrics']}")
    il = res["image_level"]
    if il:
        print(f"image level (held out, levels {il['levels']}, n={il['n']}): MCC {il['mcc']:.3f} acc {il['accuracy']:.3f} "
              f"best threshold {il['best_threshold']:.3f} (MCC {il['best_mcc']:.3f}); per level {il['mcc_per_level']}")
    print(f"best {res['best']}; profile entry in {args.out}/expert.yaml; report {args.out}/report.json")
    return 0


def cmd_calibrate(args) -> int:
    from natix_miner.config import ProfileError
    from natix_miner.training.calibrate import calibrate_profile
    from natix_miner.training.datasets import DataError

    _setup(args)
    try:
        res = calibrate_profile(args.profile, args.data, n=args.n, seed=args.seed, method=args.method,
                                holdout=args.holdout, all_levels=args.all_levels, nonneg=not args.allow_negative,
                                write=not args.dry_run, progress=not args.quiet)
    except (ProfileError, DataError) as exc:
        return _err(str(exc))
    except ValueError as exc:
        return _err(str(exc), 1)
    m = res["metrics"]
    for when in ("before", "after"):
        x = m[when]
        print(f"{when:>6} ({m['evaluated_on']}, n={m['n_eval']}): MCC {x['mcc']:.3f} acc {x['accuracy']:.3f} "
              f"reward {x['reward_proxy']:.3f} best threshold {x.get('best_threshold', float('nan')):.3f} "
              f"ECE {x['ece']:.3f}")
    fit = res["fit"]
    print(f"weights {fit.default.rule()['weights']} bias {fit.default.bias:+.3f} T {fit.default.temperature:.3f}"
          f"; stages {list(fit.stages)}")
    if res["meta"].get("expert_calibration"):
        print(f"detector options.calibration to paste into the profile: {res['meta']['expert_calibration']}")
    if args.method == "isotonic":
        print("note: the engine applies weights/bias/temperature; the isotonic knots are stored under "
              "'calibration' in the consensus file")
    print(f"wrote {res['path']}" if res["path"] else "dry run: nothing written")
    if args.json:
        _dump({"metrics": m, "meta": res["meta"], "path": res["path"]}, args.json)
    return 0


def cmd_evaluate(args) -> int:
    from natix_miner.config import ProfileError
    from natix_miner.training.datasets import DataError
    from natix_miner.offline import apply_download_policy
    from natix_miner.preflight import DegradedStart, degraded_message
    from natix_miner.training.evaluate import evaluate_profiles, format_evaluation, write_json

    _setup(args)
    apply_download_policy(args.allow_downloads)
    from natix_miner.standins import apply_cli

    if apply_cli(args):
        return 2
    try:
        rep = evaluate_profiles(list(args.profile) + list(args.compare), args.data, n=args.n, seed=args.seed,
                                all_levels=args.all_levels, concurrency=args.concurrency, plots=args.plots,
                                progress=not args.quiet, allow_degraded=args.allow_degraded)
    except DegradedStart as exc:
        print(degraded_message(exc.lines), file=sys.stderr)
        return 2
    except (ProfileError, DataError, ValueError) as exc:
        return _err(str(exc))
    print(format_evaluation(rep))
    if args.json:
        write_json(rep, args.json)
        print(f"wrote {args.json}")
    return 0


def cmd_hard(args) -> int:
    from natix_miner.config import ProfileError
    from natix_miner.training.datasets import DataError
    from natix_miner.training.hard import mine

    _setup(args)
    try:
        s = mine(args.profile, args.data, args.out, top=args.top, n=args.n, seed=args.seed,
                 progress=not args.quiet, fiftyone_name=args.fiftyone_name)
    except (ProfileError, DataError, ValueError) as exc:
        return _err(str(exc))
    print(f"ranked {s['n']} images, exported {s['exported']} to {s['images']} and {s['csv']}"
          + (f"; FiftyOne dataset {s['fiftyone']!r}" if s["fiftyone"] else " (fiftyone not installed)"))
    return 0


def cmd_distill(args) -> int:
    from natix_miner.config import ProfileError
    from natix_miner.training.datasets import DataError
    from natix_miner.training.distill import pseudo_label

    _setup(args)
    try:
        s = pseudo_label(args.teacher, args.data, args.out, low=args.low, high=args.high, n=args.n,
                         seed=args.seed, progress=not args.quiet)
    except (ProfileError, DataError, ValueError) as exc:
        return _err(str(exc))
    print(f"teacher {s['teacher']}: labelled {s['labelled']} of {s['n']} (roadwork {s['roadwork']}, "
          f"none {s['none']}, uncertain {s['skipped_uncertain']}) -> {s['out']}")
    if not args.train_out:
        return 0
    if s["roadwork"] == 0 or s["none"] == 0:
        return _err("the teacher's confident labels hold one class only: nothing to train on", 1)
    args.resume = False
    return _run_training(args, args.out, args.train_out, args.val)
