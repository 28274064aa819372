"""Command line of the mock validator (``scripts/mock_validator.py`` and ``natix-miner mock-validator``).

    python scripts/mock_validator.py --spawn-miner --n 200 --json out.json
    python scripts/mock_validator.py --spawn-miner --profile demo-cpu --profile configs/other.yaml --n 100
    python scripts/mock_validator.py 127.0.0.1:8091:5F... a=127.0.0.1:8092:5G... --concurrency 8
    python scripts/mock_validator.py --miner-url http://127.0.0.1:9100 --n 50   # every hotkey of one miner
    python scripts/mock_validator.py --spawn-miner --source data/roadwork.parquet --plot run.png

Exit status: 0, or 3 when any miner gave an invalid answer (NaN or outside [0, 1]), 2 on bad input.
"""

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import typing


def _floats(text: str) -> typing.Tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def build_parser(parser: typing.Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="mock_validator", description=__doc__.split("\n\n")[0],
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="[NAME=]HOST:PORT:HOTKEY", help="running miners to query")
    p.add_argument("--miner-url", action="append", default=[], metavar="URL",
                   help="a running miner's metrics/health URL (http://127.0.0.1:9100): query every hotkey it serves "
                        "(repeatable; a --hotkeys miner serves several)")
    p.add_argument("--spawn-miner", action="store_true",
                   help="start a local-mode miner per --profile (subprocess), admit this validator, stop it at the end")
    p.add_argument("--profile", action="append", default=None,
                   help="profile for a spawned miner (repeat to compare profiles); default: the embedded default")
    p.add_argument("--n", type=int, default=200, help="challenges (default 200)")
    p.add_argument("--source", default="procedural", help="procedural | DIR (roadwork/ + none/, or labels CSV) | FILE.parquet")
    p.add_argument("--synthetic-fraction", type=float, default=0.5, help="share of challenges marked synthetic (0.5)")
    p.add_argument("--synthetic-source", choices=("procedural", "same"), default="procedural",
                   help="where synthetic challenges come from (procedural 1024x1024 scenes, or --source itself)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=9.0, help="per-query timeout, seconds (validators: 9)")
    p.add_argument("--concurrency", type=int, default=1, help="challenges in flight at once (load testing)")
    p.add_argument("--route", choices=("image", "extended", "both"), default="image",
                   help="ImageSynapse, the legacy ExtendedImageSynapse, or alternate")
    p.add_argument("--rotation", choices=("nearest", "bilinear"), default="nearest",
                   help="rotation interpolation (the live validator's code path is nearest)")
    p.add_argument("--fallback-values", type=_floats, default=(0.49, 0.5, 0.4999),
                   help="answers counted as fallback-looking (comma-separated)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="reward over time and latency histogram")
    p.add_argument("--wallet.name", dest="wallet_name", help="validator wallet (default: a throw-away one)")
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    p.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    p.add_argument("--miner-arg", action="append", default=[], help="extra flag for spawned miners (repeatable)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for a spawned miner")
    p.add_argument("--allow-downloads", action="store_true",
                   help="spawned miners may download missing models (default: offline; NATIX_ALLOW_DOWNLOADS=1 too)")
    p.add_argument("--allow-degraded", action="store_true",
                   help="spawned miners serve even when a tier has no loadable expert")
    p.add_argument("--no-progress", action="store_true")
    from natix_miner.standins import add_arguments

    add_arguments(p)  # --stand-ins DIR, --device D for spawned miners (they inherit NATIX_STAND_INS / NATIX_DEVICE)
    return p


def _validator_wallet(args, tmpdir: str):
    from natix_miner.miner.wallet import ephemeral_wallet

    if not args.wallet_name:
        return ephemeral_wallet("mock-validator", "default", tmpdir)
    import bittensor as bt

    w = bt.Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    try:
        w.hotkey
    except Exception as exc:  # noqa: BLE001
        raise SystemExit(f"validator wallet {args.wallet_name}/{args.wallet_hotkey}: {exc}")
    return w


def run(args) -> int:
    from natix_miner.offline import apply_download_policy

    apply_download_policy(args.allow_downloads)  # spawned miners inherit it
    from natix_miner.standins import apply_cli

    if apply_cli(args):  # --stand-ins / --device: exported, spawned miners inherit them too
        return 2
    os.environ.setdefault("BT_NO_PARSE_CLI_ARGS", "true")
    if not args.targets and not args.spawn_miner and not args.miner_url:
        print("give running miners (host:port:hotkey) and/or --spawn-miner", file=sys.stderr)
        return 2
    if args.n < 1:
        print("--n must be at least 1", file=sys.stderr)
        return 2
    try:
        import torch

        torch.set_num_threads(1)  # augmentation tensors are small; leave the cores to the miner
    except ImportError:  # pragma: no cover
        pass
    from natix_miner.synth.sources import ChallengeStream, SourceError, open_source
    from natix_miner.validator.mock import MockValidator
    from natix_miner.validator.report import build_report, format_scoreboard, write_json, write_plot
    from natix_miner.validator.targets import MinerStartError, SpawnedMiner, parse_target, targets_from_miner

    try:
        targets = [parse_target(t) for t in args.targets]
        targets += [t for url in args.miner_url for t in targets_from_miner(url)]
        real = open_source(args.source)
    except (ValueError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from natix_miner.validator.targets import port_open

    down = [t for t in targets if not port_open(t.host, t.port, timeout=3.0)]
    if down:  # say so now, not after n challenges x the timeout of silence
        for t in down:
            who = "" if t.name == f"{t.host}:{t.port}" else f"{t.name} "
            print(f"error: miner {who}at {t.host}:{t.port} does not accept connections; is it running "
                  f"(and listening on that address)? `natix-miner run --local ...` starts one", file=sys.stderr)
        return 1
    stream = ChallengeStream(real, real if args.synthetic_source == "same" else None, seed=args.seed,
                             synthetic_fraction=args.synthetic_fraction)
    with contextlib.ExitStack() as stack:
        wallet = _validator_wallet(args, stack.enter_context(tempfile.TemporaryDirectory(prefix="natix-mock-validator-")))
        vhk = wallet.hotkey.ss58_address
        print(f"validator hotkey {vhk}", file=sys.stderr)
        mv = MockValidator(wallet, targets, stream, seed=args.seed, timeout=args.timeout,
                           concurrency=args.concurrency, route=args.route, rotation_interpolation=args.rotation,
                           fallback_values=args.fallback_values)
        mv.start_preparing(args.n)  # render + augment while the miners start
        if args.spawn_miner:
            profiles = args.profile or [None]
            names = set()
            for prof in profiles:
                extra = list(args.miner_arg) + (["--allow-degraded"] if args.allow_degraded else [])
                m = SpawnedMiner(vhk, profile=prof, extra_args=extra,
                                 start_timeout=args.start_timeout)
                while m.name in names:
                    m.name += "'"
                names.add(m.name)
                print(f"starting miner '{m.name}' on 127.0.0.1:{m.port} (log {m.log_path}) ...", file=sys.stderr)
                t0 = time.time()
                try:
                    stack.enter_context(m)
                except MinerStartError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                print(f"miner '{m.name}' listening after {time.time() - t0:.1f}s", file=sys.stderr)
                targets.append(m.target)
        mv.targets = targets
        t0 = time.time()
        try:
            outcomes = asyncio.run(mv.run(args.n, progress=not args.no_progress))
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        duration = time.time() - t0
    config = {"n": args.n, "source": args.source, "seed": args.seed, "timeout": args.timeout,
              "concurrency": args.concurrency, "route": args.route, "rotation": args.rotation,
              "synthetic_fraction": args.synthetic_fraction, "synthetic_source": args.synthetic_source,
              "profiles": args.profile or ([None] if args.spawn_miner else []),
              "validator_hotkey": vhk}
    rep = build_report(outcomes, targets, config=config, duration_s=duration)
    print(format_scoreboard(rep))
    if args.json:
        write_json(rep, args.json)
        print(f"\nJSON report: {args.json}")
    if args.plot:
        write_plot(outcomes, targets, args.plot)
        print(f"plot: {args.plot}")
    return 3 if any(m["invalid"] for m in rep["miners"]) else 0


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


def add_parser(sub) -> None:
    """``natix-miner mock-validator`` (the same flags)."""
    p = sub.add_parser("mock-validator", help="replay the live validator against local miners",
                       description=__doc__.split("\n\n")[0])
    build_parser(p)
    p.set_defaults(func=run)
