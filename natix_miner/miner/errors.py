"""Start-up failures of the miner: one ``error: ...`` line naming the fix, and a distinct exit code.

The miner checks, in this order, and stops at the first failure (``natix-miner run`` prints
``error: <message>`` on stderr, no traceback unless ``--logging.debug``, and exits with the code):

====  ==============  ==========================================================================
code  stage           examples
====  ==============  ==========================================================================
1     unexpected      a bug: the message and, with ``--logging.debug``, the traceback
2     configuration   bad flag or variable value, unknown profile, bad ``--subtensor.network``,
                      demo profile on chain without ``--allow-demo``, unreadable NATIX_ENV_FILE
3     wallet          hotkey file missing, Vault unreachable or secret unreadable
4     chain           subtensor endpoint unreachable (the endpoint is named)
5     registration    hotkey not registered on the subnet
6     permissions     key or config files open to other users
7     models          the engine failed to load the profile
8     port            axon or metrics port taken or not bindable (the flag/variable is named)
9     serve           no public IP for the axon, or ``serve_axon`` refused by the chain
====  ==============  ==========================================================================

Usage::

    raise StartupError(CHAIN, "cannot reach subtensor at wss://x:443: ...; check --subtensor.chain_endpoint")
"""

import typing

UNEXPECTED, CONFIG, WALLET, CHAIN, REGISTRATION, PERMISSIONS, MODELS, PORT, SERVE = range(1, 10)

EXIT_CODES: typing.Dict[int, str] = {
    UNEXPECTED: "unexpected error (a bug; --logging.debug shows the traceback)",
    CONFIG: "configuration: a flag, variable, env file or profile is wrong",
    WALLET: "wallet: hotkey file or Vault secret not available",
    CHAIN: "chain: subtensor endpoint unreachable",
    REGISTRATION: "registration: hotkey not registered on the subnet",
    PERMISSIONS: "permissions: key or config files open to other users",
    MODELS: "models: the engine could not load the profile",
    PORT: "port: the axon or metrics port is taken or cannot be bound",
    SERVE: "serve: no public IP, or serve_axon refused by the chain",
}


class StartupError(RuntimeError):
    """A failure before the miner serves; ``code`` is the process exit code (see :data:`EXIT_CODES`)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = int(code)


class ConfigError(StartupError, ValueError):
    """A configuration value is wrong; the message names the flag or variable and the fix."""

    def __init__(self, message: str):
        super().__init__(CONFIG, message)


class PortInUse(StartupError):
    """A port the miner must listen on is taken; the message names it and the flag/variable."""

    def __init__(self, what: str, host: str, port: int, flag: str, env: str, detail: str = ""):
        why = f" ({detail})" if detail else ""
        super().__init__(PORT, f"{what} port {host}:{port} is not available{why}; another process holds it? "
                               f"free it or pick another port with {flag} / {env}")
        self.port = port
