"""``natix-miner engine``: the cascade as a Ray Serve application (docs/scaling.md).

    ray start --head --port 6379                                   # once per cluster (head node)
    natix-miner engine serve --profile h100x2 --ray 127.0.0.1:6379 --app natix
    natix-miner engine serve --profile h100x2 --ray 127.0.0.1:6379 --stand-ins DIR --device cpu
    natix-miner engine status --ray 127.0.0.1:6379 --app natix     # the app's engine status, JSON
    python neurons/miner.py ... --engine.ray 127.0.0.1:6379 --engine.app natix

``serve`` deploys (or updates) the application and returns once every expert has loaded; the
application stays on the cluster after the command exits.
"""

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("engine", help="deploy the cascade on a Ray cluster (Ray Serve)")
    verbs = p.add_subparsers(dest="engine_command", metavar="VERB")
    s = verbs.add_parser("serve", help="deploy the profile as a Ray Serve application and wait until it loaded",
                         formatter_class=p.formatter_class)  # the project's defaults formatter (natix_miner/cli.py)
    s.add_argument("--profile", default="demo-cpu", help="profile name (configs/NAME.yaml) or path")
    _cluster_args(s)
    s.add_argument("--batching", choices=["serve", "engine"], default="serve",
                   help="who batches inside an expert deployment: Ray Serve's @serve.batch, or the engine's "
                        "MicroBatcher (docs/scaling.md has the measurement)")
    s.add_argument("--gpu-memory-gb", type=float, default=80.0,
                   help="memory of one card: a cuda expert asks for memory_gb / this of a GPU (whole card without "
                        "a memory_gb hint)")
    s.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs of a cpu expert's replica")
    s.add_argument("--ingress-cpus", type=float, default=0.5, help="Ray CPUs of an ingress (cascade) replica")
    s.add_argument("--ingress-replicas", type=int, default=1, help="replicas of the ingress (cascade) deployment")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every expert to load")
    s.add_argument("--allow-degraded", action="store_true",
                   help="deploy even when a tier has no model on this machine (those experts are left out)")
    s.add_argument("--allow-downloads", action="store_true",
                   help="let missing models download (default: offline; NATIX_ALLOW_DOWNLOADS=1 too)")
    from natix_miner.standins import add_arguments

    add_arguments(s)  # --stand-ins DIR, --device D (applied where the profile loads; forwarded to replicas)
    s.set_defaults(func=serve_main)
    st = verbs.add_parser("status", help="the application's engine status (JSON)", formatter_class=p.formatter_class)
    _cluster_args(st)
    st.set_defaults(func=status_main)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _cluster_args(p) -> None:
    p.add_argument("--ray", required=True, metavar="ADDRESS",
                   help="the cluster: HOST:PORT of its head (this box must be a node: `ray start --address`), "
                        "auto, or ray://HOST:10001 (Ray Client)")
    p.add_argument("--app", default="natix", help="Ray Serve application name (the miner's --engine.app)")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _unreachable(address: str, exc: BaseException) -> int:
    return _error(f"cannot reach the Ray cluster at {address} ({exc}); start it with `ray start --head` or fix --ray")


def serve_main(args) -> int:
    import importlib.util

    from natix_miner.config import ProfileError, load_profile
    from natix_miner.offline import apply_download_policy
    from natix_miner.standins import apply_cli

    if importlib.util.find_spec("ray") is None:
        return _error("Ray Serve is not installed: pip install -e '.[ray]'")
    apply_download_policy(args.allow_downloads)
    if apply_cli(args):
        return 2
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        return _error(f"{exc} (--profile)")
    from natix_miner.engine.engine import check_profile
    from natix_miner.preflight import missing_models

    problems = check_profile(profile)
    if problems:
        return _error("; ".join(problems))
    missing = missing_models(profile)
    for m in missing:
        print(f"{'warning' if args.allow_degraded else 'error'}: model not present: {m.line()}", file=sys.stderr)
    skip = {m.expert for m in missing}
    empty = [t.name for t in profile.tiers if t.experts and all(e in skip for e in t.experts)]
    if empty and not args.allow_degraded:
        return _error(f"tier(s) {', '.join(empty)} would have no expert; fix the models named above, or pass "
                      f"--allow-degraded")
    from natix_miner.engine.ray_serve import deploy

    try:
        summary = deploy(profile, args.ray, app=args.app, skip=skip, batching=args.batching,
                         gpu_memory_gb=args.gpu_memory_gb, cpu_per_replica=args.cpus_per_replica,
                         ingress_cpus=args.ingress_cpus, ingress_replicas=args.ingress_replicas,
                         timeout_s=args.timeout)
    except ConnectionError as exc:
        return _unreachable(args.ray, exc)
    except Exception as exc:  # noqa: BLE001 - deployment failures (a replica that cannot load): one line
        return _error(f"deploying {profile.name} as {args.app!r} on {args.ray} failed: {type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
    for d in summary["deployments"]:
        gpus = f", {d['num_gpus']:g} GPU" if d["num_gpus"] else ""
        print(f"  {d['name']}: {d['num_replicas']} replica(s) x ({d['num_cpus']:g} CPU{gpus}) on {d['device']}")
    print(f"deployed profile {profile.name} as Ray Serve app {args.app!r} on {args.ray} in {summary['seconds']} s "
          f"(batching: {args.batching}); miners: --engine.ray {args.ray} --engine.app {args.app}")
    return 0


def status_main(args) -> int:
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return _error("Ray Serve is not installed: pip install -e '.[ray]'")
    from ray import serve

    from natix_miner.engine.ray_serve import connect

    try:
        connect(args.ray)
    except ConnectionError as exc:
        return _unreachable(args.ray, exc)
    try:
        st = serve.get_app_handle(args.app).status.remote().result(timeout_s=30)
    except Exception as exc:  # noqa: BLE001 - one line
        return _error(f"no answer from Ray Serve app {args.app!r} at {args.ray} ({type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); deploy it with "
                      f"`natix-miner engine serve --ray {args.ray} --app {args.app}`")
    print(json.dumps(st, indent=2, default=str))
    return 0
