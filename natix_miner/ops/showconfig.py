"""Print the miner configuration that flags + environment + profile resolve to, secrets masked.

``deploy/start_miner.sh`` runs this instead of the miner when ``NATIX_DRY_RUN=1``, so an operator
can check what ``miner.env`` produces before pm2 starts anything::

    NATIX_DRY_RUN=1 bash deploy/start_miner.sh
    python -m natix_miner.ops.showconfig --local --axon.port 8091
"""

import json
import os
import sys
import typing

SECRET_KEYS = ("token", "secret_id", "role_id")


def resolved_config(argv: typing.Sequence[str], env: typing.Mapping[str, str]) -> dict:
    from natix_miner.miner.args import build_config, build_parser

    ns, unknown = build_parser().parse_known_args(list(argv))
    if unknown:
        raise SystemExit(f"unknown flags: {unknown}")
    data = build_config(namespace=ns, env=env).model_dump()
    for key in SECRET_KEYS:
        if data["vault"].get(key):
            data["vault"][key] = "***"
    return data


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    from natix_miner import envs
    from natix_miner.miner.errors import StartupError

    try:
        data = resolved_config(sys.argv[1:] if argv is None else argv, os.environ)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    for line in envs.env_warnings(envs.with_env_file(os.environ)):
        print(f"warning: {line}", file=sys.stderr)
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
