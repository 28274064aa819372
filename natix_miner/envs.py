"""Every environment variable natix-miner reads, declared in one place.

Two kinds:

* one variable per flag of ``natix-miner run``: derived from the flag table in
  :mod:`natix_miner.miner.args` (``--axon.port`` -> ``NATIX_AXON_PORT``), so a new flag gets its variable,
  its ``--help`` line and its README row at once (:func:`declared` lists them);
* the variables below (:data:`VARIABLES`): secrets that are never flags (``VAULT_TOKEN``) and the ones
  read by scripts, the model store and the tests.

Env files (``miner.env``) are parsed by python-dotenv (CRLF line ends, quotes, ``export`` prefixes,
comments); ``NATIX_ENV_FILE`` names one, relative to the caller's directory. Variables already in the
process environment win over the file.

Usage::

    from natix_miner import envs
    envs.get("NATIX_PROFILE")                         # -> None or the value
    env = envs.with_env_file(os.environ)             # + the values of NATIX_ENV_FILE
    envs.env_warnings(env)                           # unknown NATIX_* keys, with the nearest name
    python -m natix_miner.envs --export miner.env    # shell-quoted ``export K=V`` lines (start_miner.sh)

Precedence everywhere: CLI flag > environment > env file > profile ``miner:`` section > default.
"""

import difflib
import os
import shlex
import sys
import typing

# name -> (config key it feeds or None, description). Flag variables are NOT listed here (see args.FLAGS).
VARIABLES: typing.Dict[str, typing.Tuple[typing.Optional[str], str]] = {
    "VAULT_TOKEN": ("vault.token", "Vault token (never logged)"),
    "VAULT_NAMESPACE": ("vault.namespace", "Vault enterprise namespace"),
    "VAULT_ROLE_ID": ("vault.role_id", "AppRole role id"),
    "VAULT_SECRET_ID": ("vault.secret_id", "AppRole secret id (never logged)"),
    "NATIX_ENV_FILE": (None, "env file to read (relative to the caller's directory; default for "
                             "deploy/start_miner.sh: miner.env in the repo)"),
    "NATIX_STAND_INS": (None, "stand-in weights directory (`natix-miner models stand-in`): every expert loads its stand-in"),
    "NATIX_DEVICE": (None, "cpu | cuda | cuda:N: every expert and replica on this device (cpu: vllm runs as hf_vlm)"),
    "NATIX_MODEL_DIR": (None, "the writable model store (default: models/ of the checkout; ./models for an installed package)"),
    "NATIX_ROOT": (None, "root of the shipped profiles and manifests (configs/, models/; default: the checkout, else the installed package's copy)"),
    "NATIX_SEED": (None, "seed for procedural data in demos and tests"),
    "NATIX_ALLOW_INSECURE_PERMISSIONS": (None, "1: start even if key/config files are open to other users"),
    "NATIX_REGISTRATION_URL": (None, "NATIX participant API base for `natix-miner register`"),
    "NATIX_EXTRA_ARGS": (None, "deploy/start_miner.sh: extra flags appended to the command line"),
    "NATIX_PYTHON": (None, "deploy/start_miner.sh: the interpreter (default .venv/bin/python)"),
    "NATIX_DRY_RUN": (None, "deploy/start_miner.sh: 1 prints the resolved config and command only"),
    "NATIX_PM2_NAME": (None, "ecosystem.config.js: the pm2 process name"),
    "NATIX_SKIP_VLLM": (None, "scripts/setup.sh: 1 skips .venv-vllm"),
    "NATIX_UNLOCKED": (None, "scripts/setup.sh: 1 installs without requirements.lock"),
    "NATIX_VLLM_PYTHON": (None, "tests: the interpreter of .venv-vllm"),
    "NATIX_VLM_API_KEY": (None, "openai_vlm expert: API key of the remote VLM server"),
    "NATIX_TEST_VLM_KEY": (None, "tests: API key of the local VLM test server"),
    "NATIX_QUICKSTART_N": (None, "scripts/quickstart.sh: challenges to send"),
    # containers (Dockerfile.miner, deploy/compose.yaml, scripts/docker_*): read by docker, compose or the scripts
    "NATIX_IMAGE_TAG": (None, "deploy/compose.yaml: the natix-miner image tag"),
    "NATIX_WALLETS": (None, "deploy/compose.yaml: host wallet directory mounted read-only"),
    "NATIX_METRICS_HOST_PORT": (None, "deploy/compose.yaml: host port (on 127.0.0.1) publishing the metrics"),
    "NATIX_UID": (None, "Dockerfile.miner build arg: uid of the natix user"),
    "NATIX_DOCKER": (None, "scripts/docker_build.py: the docker binary"),
    "NATIX_DOCKER_BASE": (None, "scripts/docker_setup.sh: base image"),
    "NATIX_DOCKER_SUITE": (None, "scripts/docker_setup.sh: Debian suite"),
    "NATIX_DEBIAN_MIRROR": (None, "scripts/docker_setup.sh: Debian mirror"),
}

# The NATIX reference miner's miner.env names (natixnetwork/streetvision-subnet, setup_env.sh and
# start_miner.sh): read as the NATIX_* variable on the right when that one is not set.
REFERENCE_ALIASES: typing.Dict[str, str] = {
    "NETUID": "NATIX_NETUID",
    "SUBTENSOR_NETWORK": "NATIX_NETWORK",
    "SUBTENSOR_CHAIN_ENDPOINT": "NATIX_CHAIN_ENDPOINT",
    "WALLET_NAME": "NATIX_WALLET_NAME",
    "WALLET_HOTKEY": "NATIX_WALLET_HOTKEY",
    "MINER_AXON_PORT": "NATIX_AXON_PORT",
    "MODEL_URL": "NATIX_MODEL_URL",
    "BLACKLIST_FORCE_VALIDATOR_PERMIT": "NATIX_BLACKLIST_FORCE_VALIDATOR_PERMIT",
}
# Reference names with no equivalent value: warned about, never read.
REFERENCE_UNUSED: typing.Dict[str, str] = {
    "IMAGE_DETECTOR": "the cascade is a profile here: set NATIX_PROFILE (gpu-small runs the reference ViT)",
    "IMAGE_DETECTOR_CONFIG": "the cascade is a profile here: set NATIX_PROFILE (configs/<name>.yaml or a path)",
    "IMAGE_DETECTOR_DEVICE": "devices are set per expert in the profile (device: cuda:0); see docs/engine.md",
}


def declared() -> typing.Dict[str, typing.Tuple[typing.Optional[str], str]]:
    """Every declared variable: the flag variables (from the flag table) plus :data:`VARIABLES`."""
    from natix_miner.miner.args import flag_variables

    out = {name: (key, desc) for name, key, desc in flag_variables()}
    for name, spec in VARIABLES.items():
        out.setdefault(name, spec)
    return out


def get(name: str, default: typing.Optional[str] = None) -> typing.Optional[str]:
    if name not in VARIABLES and name not in declared():
        raise KeyError(f"undeclared environment variable {name}; add it to natix_miner/envs.py")
    return os.environ.get(name, default)


class EnvFileError(ValueError):
    """``NATIX_ENV_FILE`` names a file that cannot be read; the message names it and the fix."""


def read_env_file(path: str, cwd: typing.Optional[str] = None) -> typing.Dict[str, str]:
    """``KEY=VALUE`` pairs of an env file (python-dotenv: CRLF, quotes, ``export``, comments).

    A relative ``path`` is resolved from ``cwd`` (default: the current directory). Keys without a value
    are dropped; nothing is expanded (``$HOME`` stays as written, like the reference miner's files)."""
    from dotenv import dotenv_values

    full = os.path.join(cwd or os.getcwd(), os.path.expanduser(path))
    if not os.path.isfile(full):
        raise EnvFileError(f"NATIX_ENV_FILE={path}: {full} not found; create it: "
                           f"cp miner.env.example miner.env && chmod 600 miner.env")
    try:
        values = dotenv_values(full, interpolate=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvFileError(f"NATIX_ENV_FILE={path}: cannot read {full}: {exc}") from None
    return {k: v for k, v in values.items() if v is not None}


def with_env_file(env: typing.Mapping[str, str], cwd: typing.Optional[str] = None) -> typing.Dict[str, str]:
    """``env`` plus the values of the file ``env["NATIX_ENV_FILE"]`` names (``env`` wins)."""
    env = dict(env)
    path = env.get("NATIX_ENV_FILE")
    if not path:
        return env
    return {**read_env_file(path, cwd), **env}


def env_warnings(env: typing.Mapping[str, str]) -> typing.List[str]:
    """One line per suspicious variable: unknown ``NATIX_*`` (with the nearest declared name), reference
    names read as aliases or ignored, and an alias that disagrees with the NATIX_* variable it shadows."""
    known = declared()
    out: typing.List[str] = []
    for name in sorted(env):
        if name.startswith("NATIX_") and name not in known:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else "; natix-miner run --help lists every variable"
            out.append(f"unknown variable {name} ignored{hint}")
    for ref, natix in REFERENCE_ALIASES.items():
        if env.get(ref, "") == "":
            continue
        if env.get(natix, "") not in ("", env[ref]):
            out.append(f"{ref}={env[ref]} (reference-miner name) ignored: {natix}={env[natix]} is set and wins")
        elif env.get(natix, "") == "":
            out.append(f"{ref} (reference-miner name) read as {natix}")
    for ref, why in REFERENCE_UNUSED.items():
        if env.get(ref, "") not in ("", "None"):
            out.append(f"{ref}={env[ref]} (reference-miner name) is not used: {why}")
    return out


def export_lines(path: str, env: typing.Optional[typing.Mapping[str, str]] = None) -> str:
    """Shell ``export K=V`` lines for the file's keys not already in ``env`` (quoted with shlex)."""
    env = os.environ if env is None else env
    lines = []
    for key, value in read_env_file(path).items():
        if key.isidentifier() and key not in env:
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines)


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--export":
        print("usage: python -m natix_miner.envs --export FILE", file=sys.stderr)
        return 2
    try:
        print(export_lines(args[1]))
    except EnvFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
