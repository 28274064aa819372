"""``natix-miner build PROFILE --data D --out runs/NAME``: every missing checkpoint trained, the
consensus and escalation band fitted, the cascade evaluated against each expert alone, a report and
a ready profile written (``natix_miner/training/build.py``; docs/training.md).

    natix-miner build demo-cpu --data procedural --out runs/demo-cpu --dry-run   # the plan and its cost
    natix-miner build demo-cpu --data procedural --out runs/demo-cpu             # run (resumable)
    natix-miner build demo-cpu --data procedural --out runs/demo-cpu --retrain all --install   # rebuild the demo
    natix-miner build h100x1 --data data/roadwork --out runs/h100x1 --scale tiny # plumbing check

Re-running the same command skips the steps already done (a killed build continues); a step whose
trainer is not in this build is reported ``not available: <why>``. Exit status: 0 built, 1 a step
failed or is not available (the report says which), 2 bad input.
"""

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("build", help="train what a profile is missing, calibrate, evaluate, report (resumable)")
    p.add_argument("profile", help="profile name in configs/ or a path")
    p.add_argument("--data", required=True, help="folder, .csv, .parquet, pulled dataset dir, or procedural")
    p.add_argument("--out", required=True, help="run folder (checkpoints, ready profile, report.md, .build/)")
    p.add_argument("--dry-run", action="store_true", help="list the steps and their estimated cost, run nothing")
    p.add_argument("--scale", default="full", choices=["tiny", "full"],
                   help="tiny: a few images and optimiser steps per trainer (CI plumbing); full: the profile's recipe")
    p.add_argument("--steps", default=None,
                   help="comma list of steps to run (the others must be done already), e.g. calibrate,evaluate,report")
    p.add_argument("--retrain", default=None, metavar="EXPERTS",
                   help="comma list of experts (or all) with a build recipe to train again although their "
                        "checkpoint exists")
    p.add_argument("--install", action="store_true",
                   help="copy the checkpoints to the paths the profile names and the consensus beside it")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args) -> int:
    from natix_miner.config import ProfileError, load_profile
    from natix_miner.training.build import BuildError, format_plan, plan, run_build, states
    from natix_miner.training.datasets import DataError

    try:
        # the consensus beside the profile is refitted by the build (and may name experts since replaced)
        profile = load_profile(args.profile, stand_ins=False, device=False, fitted=False)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = str(args.data)
    if not (data == "procedural" or data.startswith("procedural:")):
        from pathlib import Path

        if not Path(data).exists():
            print(f"error: --data {data}: no such file or folder (a folder with roadwork/ and none/, a CSV, "
                  "a parquet dataset, or procedural)", file=sys.stderr)
            return 2
    try:
        retrain = [x.strip() for x in args.retrain.split(",") if x.strip()] if args.retrain else ()
        ctx, steps = plan(profile, data, args.out, scale=args.scale, install=args.install,
                          progress=not args.quiet, retrain=retrain)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    unknown = sorted(set(only or ()) - {s.name for s in steps})
    if unknown:
        print(f"error: --steps: unknown step(s) {unknown}; steps of this build: {[s.name for s in steps]}",
              file=sys.stderr)
        return 2
    print(format_plan(steps, states(ctx, steps)))
    if args.dry_run:
        return 0
    from natix_miner.offline import enforce_offline

    enforce_offline()  # trainers start from local weights only
    from natix_miner.training.commands import _setup

    try:
        _setup(args)
    except ModuleNotFoundError as exc:  # a bare training host without the miner's chain client (bittensor)
        import logging

        logging.basicConfig(level=logging.INFO)
        print(f"note: plain logging ({exc.name} is not installed here)", file=sys.stderr)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
    command = "natix-miner build " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["build"] else [args.profile])
    try:
        summary = run_build(ctx, steps, only=only, command=command)
    except (BuildError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to continue (finished steps are skipped)",
              file=sys.stderr)
        return 130
    missing = [k for k, v in summary.items() if isinstance(v, str) and v.startswith("not available")]
    print(f"ready profile: {ctx.ready_path}" + (f"; report: {ctx.out / 'report.md'}"
                                                 if (ctx.out / "report.md").exists() else ""))
    if missing:
        print(f"not built here: {', '.join(missing)} (see above); the ready profile still names their "
              "original models", file=sys.stderr)
        return 1
    return 0
