"""Every environment variable natix-miner reads, declared in one place.

Usage::

    from natix_miner import envs
    envs.get("NATIX_PROFILE")        # -> None or the value

Precedence everywhere: CLI flag > environment > profile ``miner:`` section > default.
"""

import os
import typing

# name -> (config key it feeds or None, description)
VARIABLES: typing.Dict[str, typing.Tuple[typing.Optional[str], str]] = {
    "NATIX_PROFILE": ("profile", "profile name or path (default: the embedded demo-cpu profile)"),
    "NATIX_NETUID": ("chain.netuid", "subnet uid (72 mainnet, 323 testnet)"),
    "NATIX_NETWORK": ("chain.network", "subtensor network (finney, test, local) or ws:// endpoint"),
    "NATIX_WALLET_NAME": ("wallet.name", "coldkey wallet name"),
    "NATIX_WALLET_HOTKEY": ("wallet.hotkey", "hotkey name"),
    "NATIX_WALLET_PATH": ("wallet.path", "wallet directory"),
    "NATIX_AXON_PORT": ("axon.port", "axon port"),
    "NATIX_MODEL_URL": ("model_url", "model repository URL answered on the legacy route"),
    "NATIX_METRICS_PORT": ("metrics.port", "Prometheus metrics and health port"),
    "VAULT_ADDR": ("vault.addr", "Vault / OpenBao address"),
    "VAULT_TOKEN": ("vault.token", "Vault token (never logged)"),
    "VAULT_NAMESPACE": ("vault.namespace", "Vault enterprise namespace"),
    "VAULT_ROLE_ID": ("vault.role_id", "AppRole role id"),
    "VAULT_SECRET_ID": ("vault.secret_id", "AppRole secret id (never logged)"),
    "NATIX_VAULT_PATH": ("vault.path", "KV v2 path of the hotkey secret"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("tracing.endpoint", "OTLP/HTTP endpoint; tracing is off when unset"),
    "NATIX_LOG_DIR": ("logging.dir", "directory for rotating log files"),
    "NATIX_LOG_LEVEL": ("logging.level", "log level"),
    "NATIX_MODEL_DIR": (None, "the local model store (default: models/ in the repo)"),
    "NATIX_SEED": (None, "seed for procedural data in demos and tests"),
    "NATIX_ALLOW_INSECURE_PERMISSIONS": (None, "1: start even if key/config files are open to other users"),
    "NATIX_REGISTRATION_URL": (None, "NATIX participant API base for `natix-miner register`"),
}


def get(name: str, default: typing.Optional[str] = None) -> typing.Optional[str]:
    if name not in VARIABLES:
        raise KeyError(f"undeclared environment variable {name}; add it to natix_miner/envs.py")
    return os.environ.get(name, default)
