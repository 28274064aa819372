"""Command-line flags of the neuron, bittensor style (``--wallet.name``), into :class:`MinerConfig`.

Usage::

    from natix_miner.miner.args import build_config, build_parser
    cfg = build_config(["--local", "--axon.port", "0"])
"""

import argparse
import typing

import pydantic

from natix_miner import envs
from natix_miner.config import MinerConfig, ProfileError, load_profile


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _csv(v: str) -> typing.List[str]:
    return [x for x in (p.strip() for p in v.split(",")) if x]


# flag -> (config key, type, help)
FLAGS: typing.List[typing.Tuple[str, str, typing.Callable, str]] = [
    ("--profile", "profile", str, "profile name (configs/NAME.yaml) or path"),
    ("--model_url", "model_url", str, "model repository URL (legacy route)"),
    ("--local.metagraph", "local_metagraph", str, "local mode: YAML/JSON list of {hotkey, stake, validator_permit}"),
    ("--netuid", "chain.netuid", int, "subnet uid"),
    ("--subtensor.network", "chain.network", str, "finney | test | local"),
    ("--subtensor.chain_endpoint", "chain.chain_endpoint", str, "ws(s):// endpoint"),
    ("--wallet.name", "wallet.name", str, "coldkey wallet name"),
    ("--wallet.hotkey", "wallet.hotkey", str, "hotkey name"),
    ("--wallet.path", "wallet.path", str, "wallet directory"),
    ("--axon.ip", "axon.ip", str, "bind address"),
    ("--axon.port", "axon.port", int, "axon port (0 picks a free one in local mode)"),
    ("--axon.external_ip", "axon.external_ip", str, "IP announced on chain"),
    ("--axon.external_port", "axon.external_port", int, "port announced on chain"),
    ("--axon.max_workers", "axon.max_workers", int, "axon thread pool size"),
    ("--axon.max_body_bytes", "axon.max_body_bytes", int, "request body limit"),
    ("--axon.header_timeout_s", "axon.header_timeout_s", float,
     "close a connection whose request headers take longer (slow-loris)"),
    ("--blacklist.force_validator_permit", "blacklist.force_validator_permit", _bool, "true/false"),
    ("--blacklist.allow_non_registered", "blacklist.allow_non_registered", _bool, "true/false"),
    ("--blacklist.min_stake", "blacklist.min_stake", float, "minimum caller stake"),
    ("--blacklist.allowed_hotkeys", "blacklist.allowed_hotkeys", _csv, "comma-separated ss58 hotkeys"),
    ("--vault.addr", "vault.addr", str, "Vault address (else VAULT_ADDR)"),
    ("--vault.path", "vault.path", str, "KV v2 path of the hotkey secret"),
    ("--vault.mount", "vault.mount", str, "KV v2 mount point"),
    ("--metrics.port", "metrics.port", int, "metrics + /healthz + /readyz port"),
    ("--metrics.host", "metrics.host", str, "metrics bind address"),
    ("--metrics.enabled", "metrics.enabled", _bool, "true/false"),
    ("--tracing.endpoint", "tracing.endpoint", str, "OTLP/HTTP endpoint"),
    ("--logging.level", "logging.level", str, "DEBUG | INFO | WARNING"),
    ("--blacklist.minimum_stake", "blacklist.min_stake", float, "alias of --blacklist.min_stake"),
    ("--logging.dir", "logging.dir", str, "rotating log directory"),
    ("--logging.json", "logging.json_logs", _bool, "structured JSON logs"),
]


def build_parser(parser: typing.Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="natix-miner run", description="Run the miner neuron.")
    parser.add_argument("--local", action="store_true", default=argparse.SUPPRESS,
                        help="local mode: no chain; the metagraph comes from --local.metagraph")
    parser.add_argument("--logging.debug", dest="logging.debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging (same as --logging.level DEBUG)")
    parser.add_argument("--logging.trace", dest="logging.trace", action="store_true", default=argparse.SUPPRESS,
                        help="most verbose logging")
    for flag, key, typ, help_ in FLAGS:
        parser.add_argument(flag, dest=key, type=typ, default=argparse.SUPPRESS, help=help_)
    return parser


def _set(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
    tree[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(argv: typing.Optional[typing.Sequence[str]] = None,
                 env: typing.Optional[typing.Mapping[str, str]] = None,
                 namespace: typing.Optional[argparse.Namespace] = None) -> MinerConfig:
    """CLI > environment > profile ``miner:`` section > defaults."""
    ns = namespace if namespace is not None else build_parser().parse_args(list(argv or []))
    env = env or {}
    cli: dict = {}
    for key, value in vars(ns).items():
        if key == "logging.debug" and value:
            _set(cli, "logging.level", "DEBUG")
        elif key == "logging.trace" and value:
            _set(cli, "logging.level", "TRACE")
        elif key in ("local",) or any(key == f[1] for f in FLAGS):
            _set(cli, key, value)
    from_env: dict = {}
    types = {f[1]: f[2] for f in FLAGS}
    for name, (key, _) in envs.VARIABLES.items():
        if key and env.get(name):
            raw = env[name]
            conv = types.get(key, str)
            _set(from_env, key, conv(raw) if key in types else raw)
    merged = _merge(from_env, cli)
    profile_name = merged.get("profile")
    try:
        profile = load_profile(profile_name)
    except ProfileError:
        raise
    merged["profile"] = profile.path
    final = _merge(profile.miner, merged)
    try:
        return MinerConfig.model_validate(final)
    except pydantic.ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid miner config: {msgs}") from None
