"""``natix-miner run``: the neuron. ``python neurons/miner.py`` is the same thing.

    natix-miner run --netuid 72 --wallet.name miner --wallet.hotkey default --axon.port 8091
    natix-miner run --local --axon.port 8091 --blacklist.allowed_hotkeys 5F...
"""

import asyncio
import os


def add_parser(sub) -> None:
    from natix_miner.miner.args import build_parser

    p = sub.add_parser("run", help="run the miner neuron")
    build_parser(p)
    p.set_defaults(func=main)


def main(args) -> int:
    from natix_miner.miner.args import build_config
    from natix_miner.miner.neuron import Miner
    from natix_miner.ops.logs import setup_logging

    cfg = build_config(namespace=args, env=os.environ)
    setup_logging(cfg.logging)
    hooks = None
    try:
        from natix_miner.ops.runtime import build_hooks

        hooks = build_hooks(cfg)
    except ModuleNotFoundError:
        pass
    asyncio.run(Miner(cfg, hooks=hooks).run())
    return 0
