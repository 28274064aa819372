"""``natix-miner predict IMAGE...``: images through the cascade, one JSON line each.

    natix-miner predict road.jpg --profile demo-cpu
    {"path": "road.jpg", "probability": 0.91, "tiers_run": ["fast"], ...}
"""

import asyncio
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="run images through the cascade and print JSON")
    p.add_argument("images", nargs="+", help="image files (any format)")
    p.add_argument("--profile", default=None, help="profile name or path (default: demo-cpu)")
    p.set_defaults(func=main)


async def _run(paths, profile) -> int:
    from natix_miner.engine import Engine

    engine = Engine.from_profile(profile)
    await engine.start()
    try:
        for path in paths:
            with open(path, "rb") as f:
                res = await engine.predict(f.read())
            out = {"path": path, **res.to_dict()}
            print(json.dumps(out, default=str))
    finally:
        await engine.close()
    return 0


def main(args) -> int:
    from natix_miner.ops.logs import setup_logging
    from natix_miner.config import LoggingConfig

    setup_logging(LoggingConfig(level="WARNING"))
    for p in args.images:
        try:
            open(p, "rb").close()
        except OSError as exc:
            print(f"error: cannot read {p}: {exc}", file=sys.stderr)
            return 2
    return asyncio.run(_run(args.images, args.profile))
