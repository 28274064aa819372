"""``natix-miner run``: the neuron. ``python neurons/miner.py`` is the same thing.

    natix-miner run --netuid 72 --wallet.name miner --wallet.hotkey default --axon.port 8091
    natix-miner run --local --axon.port 8091 --blacklist.allowed_hotkeys 5F...
    natix-miner run --hotkeys hotkeys.yaml --netuid 72 --profile h100x2   # one axon per hotkey, one engine
"""

import asyncio
import logging
import os
import sys
import traceback

log = logging.getLogger("natix_miner.run")


def add_parser(sub) -> None:
    from natix_miner.miner.args import build_parser

    p = sub.add_parser("run", help="run the miner neuron")
    build_parser(p)
    p.set_defaults(func=main)


def main(args) -> int:
    """Start the miner; a start-up failure is one ``error: ...`` line on stderr and its exit code
    (table: natix_miner/miner/errors.py); ``--logging.debug`` adds the traceback."""
    from natix_miner.miner.errors import PERMISSIONS, UNEXPECTED, StartupError
    from natix_miner.ops.startup_checks import InsecurePermissions

    debug = bool(getattr(args, "logging.debug", False) or getattr(args, "logging.trace", False))
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except StartupError as exc:
        error, code, message = exc, exc.code, str(exc)
    except InsecurePermissions as exc:
        error, code, message = exc, PERMISSIONS, str(exc)
    except Exception as exc:  # noqa: BLE001 - an operator sees one line; --logging.debug the traceback
        error, code, message = exc, UNEXPECTED, f"{type(exc).__name__}: {exc}"
    if debug:
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr)
    return code


def _run(args) -> int:
    from natix_miner import envs
    from natix_miner.miner.args import build_config, ignored_flags
    from natix_miner.miner.neuron import Miner
    from natix_miner.ops.logs import setup_logging

    cfg = build_config(namespace=args, env=os.environ)  # ConfigError (exit 2) names the flag or variable
    from natix_miner.offline import apply_download_policy

    apply_download_policy(cfg.allow_downloads)  # offline unless --allow-downloads: never wait on a hub
    env = envs.with_env_file(os.environ)
    setup_logging(cfg.logging)
    for line in envs.env_warnings(env) + ignored_flags(args):
        log.warning("configuration: %s", line)
    entries = None
    if cfg.hotkeys:  # many hotkeys, one engine (natix_miner/miner/hotkeys.py): the file is checked before any port
        from natix_miner.miner.hotkeys import load_hotkeys, replaced_flags

        entries = load_hotkeys(cfg.hotkeys, cfg.local)
        for line in replaced_flags(args):
            log.warning("configuration: %s", line)
    hooks = None
    try:
        from natix_miner.ops.runtime import build_hooks

        hooks = build_hooks(cfg)  # binds the metrics port now: a taken port fails before anything loads
    except ModuleNotFoundError:
        pass
    if entries is not None:
        from natix_miner.miner.hotkeys import MinerGroup

        asyncio.run(MinerGroup(cfg, hooks=hooks, entries=entries).run())
        return 0
    asyncio.run(Miner(cfg, hooks=hooks).run())
    return 0
