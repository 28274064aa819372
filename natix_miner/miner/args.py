"""Command-line flags of the neuron, bittensor style (``--wallet.name``), into :class:`MinerConfig`.

:data:`FLAGS` is the one table of settings: it drives argparse, the environment variable of every flag
(``--axon.port`` -> ``NATIX_AXON_PORT``; :data:`ENV_NAMES` holds the few that differ), the defaults
shown by ``--help`` (read from :class:`MinerConfig`) and the README's table (:func:`settings_table`).

Usage::

    from natix_miner.miner.args import build_config, build_parser
    cfg = build_config(["--local", "--axon.port", "0"])
    cfg = build_config([], env={"NATIX_ENV_FILE": "miner.env"})   # + the file, CRLF and quotes handled
    cfg.cascade                                                    # the parsed Profile (read once, here)
    print(settings_table())                                        # markdown: flag | variable | default
"""

import argparse
import difflib
import typing

import pydantic

from natix_miner import envs
from natix_miner.config import MinerConfig, ProfileError, load_profile
from natix_miner.miner.errors import ConfigError


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _csv(v: str) -> typing.List[str]:
    return [x for x in (p.strip() for p in v.split(",")) if x]


# flag -> (config key, type, help). Every row gets an environment variable (see flag_variables).
FLAGS: typing.List[typing.Tuple[str, str, typing.Callable, str]] = [
    ("--profile", "profile", str, "profile name (configs/NAME.yaml) or path"),
    ("--local", "local", _bool, "local mode: no chain; the metagraph comes from --local.metagraph"),
    ("--allow-demo", "allow_demo", _bool, "allow the demo profile on chain (it answers with a demo model)"),
    ("--allow-degraded", "allow_degraded", _bool,
     "serve even when a tier has no loadable expert (warned on every resync, natix_engine_degraded, /readyz)"),
    ("--allow-downloads", "allow_downloads", _bool,
     "let missing models download from their hub (default: offline, a missing model fails at once)"),
    ("--model_url", "model_url", str, "model repository URL (legacy route)"),
    ("--local.metagraph", "local_metagraph", str, "local mode: YAML/JSON list of {hotkey, stake, validator_permit}"),
    ("--hotkeys", "hotkeys", str,
     "YAML list of {name, wallet_name, wallet_hotkey, port, vault_path?}: one axon per hotkey, one shared engine "
     "(docs/scaling.md)"),
    ("--neuron.sync_interval_s", "sync_interval_s", float, "seconds between metagraph resyncs (and status lines)"),
    ("--netuid", "chain.netuid", int, "subnet uid (72 mainnet, 323 testnet)"),
    ("--subtensor.network", "chain.network", str, "finney | test | local | ws(s)://host:port"),
    ("--subtensor.chain_endpoint", "chain.chain_endpoint", str, "ws(s):// endpoint (wins over the network)"),
    ("--wallet.name", "wallet.name", str, "coldkey wallet name"),
    ("--wallet.hotkey", "wallet.hotkey", str, "hotkey name"),
    ("--wallet.path", "wallet.path", str, "wallet directory"),
    ("--axon.ip", "axon.ip", str, "bind address"),
    ("--axon.port", "axon.port", int, "axon port (0 picks a free one in local mode)"),
    ("--axon.external_ip", "axon.external_ip", str, "IP announced on chain (else looked up)"),
    ("--axon.external_port", "axon.external_port", int, "port announced on chain (else --axon.port)"),
    ("--axon.max_workers", "axon.max_workers", int, "axon thread pool size"),
    ("--axon.max_body_bytes", "axon.max_body_bytes", int, "request body limit"),
    ("--axon.max_inflight", "axon.max_inflight", int, "requests inside the engine at once"),
    ("--axon.max_waiting", "axon.max_waiting", int, "requests queued by stake; beyond: the fallback answer at once"),
    ("--axon.header_timeout_s", "axon.header_timeout_s", float,
     "close a connection whose request headers take longer (slow-loris)"),
    ("--axon.body_timeout_s", "axon.body_timeout_s", float,
     "close a connection whose request body takes longer after its headers"),
    ("--axon.max_connections", "axon.max_connections", int, "open connections in all (validators keep reserved ones)"),
    ("--axon.max_connections_per_peer", "axon.max_connections_per_peer", int,
     "unverified connections per client address"),
    ("--axon.reserved_connections", "axon.reserved_connections", int,
     "connections only callers with a verified, admitted hotkey can use"),
    ("--axon.max_requests_per_hotkey", "axon.max_requests_per_hotkey", int, "requests of one hotkey at once"),
    ("--axon.state_dir", "axon.state_dir", str, "directory for the replay-nonce file (default: in the wallet dir)"),
    ("--blacklist.force_validator_permit", "blacklist.force_validator_permit", _bool,
     "answer only callers with a validator permit (bare flag: true)"),
    ("--blacklist.allow_non_registered", "blacklist.allow_non_registered", _bool, "answer unregistered callers"),
    ("--blacklist.min_stake", "blacklist.min_stake", float, "minimum caller stake"),
    ("--blacklist.allowed_hotkeys", "blacklist.allowed_hotkeys", _csv, "comma-separated ss58 hotkeys"),
    ("--vault.addr", "vault.addr", str, "Vault / OpenBao address"),
    ("--vault.path", "vault.path", str, "KV v2 path of the hotkey secret (Vault is used when set)"),
    ("--vault.mount", "vault.mount", str, "KV v2 mount point"),
    ("--metrics.port", "metrics.port", int, "metrics + /healthz + /readyz port"),
    ("--metrics.host", "metrics.host", str, "metrics bind address (0.0.0.0 exposes it on every interface)"),
    ("--metrics.enabled", "metrics.enabled", _bool, "serve metrics and health"),
    ("--tracing.endpoint", "tracing.endpoint", str, "OTLP/HTTP endpoint (tracing is off when unset)"),
    ("--engine.ray", "engine.ray", str, "Ray cluster address (HOST:PORT, auto, ray://HOST:10001): answer through the "
     "Ray Serve app of `natix-miner engine serve` instead of loading models (docs/scaling.md)"),
    ("--engine.app", "engine.app", str, "Ray Serve application name (`natix-miner engine serve --app`)"),
    ("--logging.level", "logging.level", str, "DEBUG | INFO | WARNING"),
    ("--blacklist.minimum_stake", "blacklist.min_stake", float, "alias of --blacklist.min_stake"),
    ("--logging.dir", "logging.dir", str, "rotating log directory"),
    ("--logging.logging_dir", "logging.dir", str, "alias of --logging.dir (bittensor's name)"),
    ("--logging.json", "logging.json_logs", _bool, "structured JSON logs"),
]

# config key -> environment variable, where it is not NATIX_<KEY> (dots -> underscores, upper case)
ENV_NAMES: typing.Dict[str, str] = {
    "sync_interval_s": "NATIX_SYNC_INTERVAL_S",
    "chain.netuid": "NATIX_NETUID",
    "chain.network": "NATIX_NETWORK",
    "chain.chain_endpoint": "NATIX_CHAIN_ENDPOINT",
    "vault.addr": "VAULT_ADDR",
    "tracing.endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
    "logging.level": "NATIX_LOG_LEVEL",
    "logging.dir": "NATIX_LOG_DIR",
    "logging.json_logs": "NATIX_LOG_JSON",
}

# the reference miner's flags that have no meaning here: accepted (its start command works unchanged), warned
REFERENCE_IGNORED_FLAGS: typing.Dict[str, str] = {
    "--neuron.image_detector": "the cascade is --profile / NATIX_PROFILE (gpu-small runs the reference ViT)",
    "--neuron.image_detector_config": "the cascade is --profile / NATIX_PROFILE",
    "--neuron.image_detector_device": "devices are set per expert in the profile (docs/engine.md)",
}

NETWORKS = ("finney", "test", "local")
_TYPE_NAMES = {int: "an integer", float: "a number", _bool: "true/false", _csv: "a comma-separated list"}


def env_name(key: str) -> str:
    """The environment variable of a config key: ``axon.port`` -> ``NATIX_AXON_PORT``."""
    return ENV_NAMES.get(key) or "NATIX_" + key.upper().replace(".", "_").replace("-", "_")


def flag_variables() -> typing.List[typing.Tuple[str, str, str]]:
    """``(variable, config key, help)`` for every flag's key (aliases share their key's variable)."""
    seen: typing.Dict[str, typing.Tuple[str, str, str]] = {}
    for _, key, _, help_ in FLAGS:
        seen.setdefault(key, (env_name(key), key, help_))
    return list(seen.values())


def _flag_of(key: str) -> str:
    return next(f for f, k, _, _ in FLAGS if k == key)


def default_of(key: str) -> typing.Any:
    """The default of a config key, as ``--help`` and the README show it."""
    if key == "profile":
        return "demo-cpu"
    node: typing.Any = MinerConfig()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def flag_help(key: str, text: str) -> str:
    """``text [default: D; env: VAR]`` (argparse-escaped), as every command shows a settings flag."""
    d = default_of(key)
    shown = "unset" if d in (None, "", []) else (str(d).lower() if isinstance(d, bool) else d)
    return f"{text} [default: {shown}; env: {env_name(key)}]".replace("%", "%%")


def build_parser(parser: typing.Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="natix-miner run", description="Run the miner neuron.")
    parser.epilog = ("Precedence: flag > environment > NATIX_ENV_FILE > the profile's miner: section > default. "
                     "The NATIX reference miner's names (WALLET_NAME, WALLET_HOTKEY, MINER_AXON_PORT, MODEL_URL, "
                     "NETUID, SUBTENSOR_NETWORK, SUBTENSOR_CHAIN_ENDPOINT, BLACKLIST_FORCE_VALIDATOR_PERMIT) are "
                     "read when the NATIX_* variable is unset. Exit codes: natix_miner/miner/errors.py.")
    parser.add_argument("--logging.debug", dest="logging.debug", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging and tracebacks on start-up errors (same as --logging.level DEBUG)")
    parser.add_argument("--logging.trace", dest="logging.trace", action="store_true", default=argparse.SUPPRESS,
                        help="most verbose logging")
    for flag in REFERENCE_IGNORED_FLAGS:
        parser.add_argument(flag, dest=f"ignored{flag}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for flag, key, typ, help_ in FLAGS:
        extra = {"nargs": "?", "const": True, "metavar": "BOOL"} if typ is _bool else {}
        parser.add_argument(flag, dest=key, type=typ, default=argparse.SUPPRESS, help=flag_help(key, help_), **extra)
    from natix_miner.standins import add_arguments

    add_arguments(parser)  # --stand-ins DIR, --device D (NATIX_STAND_INS / NATIX_DEVICE; applied in load_profile)
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


def settings_from_env(env: typing.Mapping[str, str]) -> dict:
    """The config tree the environment sets: every flag variable (or its reference-miner alias) and the
    key-bound variables of :data:`envs.VARIABLES`. A value of the wrong type names the variable."""
    aliases = {natix: ref for ref, natix in envs.REFERENCE_ALIASES.items()}
    types = {k: t for _, k, t, _ in FLAGS}
    out: dict = {}
    rows = [(name, key) for name, key, _ in flag_variables()]
    rows += [(name, key) for name, (key, _) in envs.VARIABLES.items() if key and key not in types]
    for name, key in rows:
        raw = env.get(name, "")
        source = name
        if raw == "" and name in aliases and env.get(aliases[name], "") != "":
            source, raw = aliases[name], env[aliases[name]]
        if raw == "":
            continue
        conv = types.get(key, str)
        try:
            value = conv(raw.strip()) if conv is not str else raw
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"{source}={raw!r} is not {_TYPE_NAMES.get(conv, 'valid')}; it sets "
                              f"{_flag_of(key)}") from None
        _set(out, key, value)
    return out


def ignored_flags(ns: argparse.Namespace) -> typing.List[str]:
    """One warning per reference-miner flag given that natix-miner accepts but does not use."""
    return [f"{flag} {getattr(ns, f'ignored{flag}')} (reference-miner flag) is not used: {why}"
            for flag, why in REFERENCE_IGNORED_FLAGS.items() if hasattr(ns, f"ignored{flag}")]


def check_network(network: str, endpoint: typing.Optional[str]) -> None:
    """finney, test, local or a ws(s):// endpoint; anything else is refused with the accepted values."""
    if network not in NETWORKS and not network.startswith(("ws://", "wss://")):
        near = difflib.get_close_matches(network, NETWORKS, n=1)
        hint = {"mainnet": "finney", "testnet": "test"}.get(network.lower()) or (near[0] if near else None)
        did = f" (did you mean {hint}?)" if hint else ""
        raise ConfigError(f"--subtensor.network / NATIX_NETWORK: {network!r} is not a network{did}; use finney "
                          f"(mainnet, netuid 72), test (testnet, netuid 323), local, or a ws:// or wss:// endpoint")
    if endpoint and not endpoint.startswith(("ws://", "wss://")):
        raise ConfigError(f"--subtensor.chain_endpoint / NATIX_CHAIN_ENDPOINT: {endpoint!r} must start with "
                          f"ws:// or wss:// (e.g. wss://entrypoint-finney.opentensor.ai:443)")


def _where(loc: str) -> str:
    key = loc
    for _, k, _, _ in FLAGS:
        if k == key:
            return f" ({_flag_of(k)} / {env_name(k)})"
    return ""


def build_config(argv: typing.Optional[typing.Sequence[str]] = None,
                 env: typing.Optional[typing.Mapping[str, str]] = None,
                 namespace: typing.Optional[argparse.Namespace] = None, serving: bool = True) -> MinerConfig:
    """CLI > environment > NATIX_ENV_FILE > profile ``miner:`` section > defaults; the profile is parsed
    here, once, and kept in ``cfg.cascade`` (the neuron and the engine never read its file again). Raises
    :class:`ConfigError` (one line naming the flag or variable) on any bad value. ``serving=False``
    (``card``, ``register``: nothing is served) skips the demo-profile refusal."""
    ns = namespace if namespace is not None else build_parser().parse_args(list(argv or []))
    try:
        env = envs.with_env_file(env or {})
    except envs.EnvFileError as exc:
        raise ConfigError(str(exc)) from None
    cli: dict = {}
    keys = {f[1] for f in FLAGS}
    for key, value in vars(ns).items():
        if key == "logging.debug" and value:
            _set(cli, "logging.level", "DEBUG")
        elif key == "logging.trace" and value:
            _set(cli, "logging.level", "TRACE")
        elif key in keys:
            _set(cli, key, value)
    merged = _merge(settings_from_env(env), cli)
    from natix_miner.standins import StandInError, use_arguments

    try:
        use_arguments(ns)
    except StandInError as exc:
        raise ConfigError(f"{exc} (--stand-ins / --device)") from None
    try:
        profile = load_profile(merged.get("profile"))
    except ProfileError as exc:
        raise ConfigError(f"{exc} (--profile / NATIX_PROFILE)") from None
    merged["profile"] = profile.path
    final = _merge(profile.miner, merged)
    final["cascade"] = profile  # parsed once: the neuron and the engine use this object
    try:
        cfg = MinerConfig.model_validate(final)
    except pydantic.ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}{_where('.'.join(map(str, e['loc'])))}"
                         for e in exc.errors())
        raise ConfigError(f"invalid miner config: {msgs}") from None
    check_network(cfg.chain.network, cfg.chain.chain_endpoint)
    if serving and envs.get("NATIX_STAND_INS") and not cfg.local:
        raise ConfigError("stand-in weights are random (--stand-ins / NATIX_STAND_INS): serve them in --local mode "
                          "only, never on chain")
    if serving and profile.demo and not cfg.local and not cfg.allow_demo:
        raise ConfigError(f"profile {profile.name} is a demo (its model is a stand-in, not trained for roadwork) "
                          f"and this is chain mode; choose a real profile with --profile / NATIX_PROFILE "
                          f"(gpu-small, h100x1, h100x2), or pass --allow-demo / NATIX_ALLOW_DEMO=1")
    return cfg


def settings_table() -> str:
    """Markdown table of every flag: its variable, its default and what it does (the README's table)."""
    rows = ["| flag | environment variable | default | what it sets |", "| --- | --- | --- | --- |"]
    for flag, key, _, help_ in FLAGS:
        d = default_of(key)
        shown = "" if d in (None, "", []) else (str(d).lower() if isinstance(d, bool) else str(d))
        rows.append(f"| `{flag}` | `{env_name(key)}` | {f'`{shown}`' if shown else ''} | {help_.replace('|', '/')} |")
    from natix_miner.standins import PROFILE_FLAGS

    rows += [f"| `{flag}` | `{env}` |  | {help_} |" for flag, _, _, env, help_ in PROFILE_FLAGS]
    return "\n".join(rows)


README_MARKERS = ("<!-- settings-table:start -->", "<!-- settings-table:end -->")


def update_readme(path: typing.Optional[str] = None) -> bool:
    """Rewrite the table between the README's settings-table markers; True when it changed.

    ``python -m natix_miner.miner.args --readme`` after adding a flag (a test holds the README to it)."""
    import os

    from natix_miner.config import REPO_ROOT

    path = path or os.path.join(REPO_ROOT, "README.md")
    text = open(path, encoding="utf-8").read()
    start, end = README_MARKERS
    i, j = text.index(start) + len(start), text.index(end)
    new = text[:i] + "\n" + settings_table() + "\n" + text[j:]
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--readme"]:
        sys.exit("usage: python -m natix_miner.miner.args --readme   (rewrites README.md's settings table)")
    print("README.md updated" if update_readme() else "README.md already current")
