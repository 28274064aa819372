"""The miner's hotkey from Vault / OpenBao (KV v2), built in memory: never on disk, never logged.

The secret at ``<mount>/<path>`` (KV version 2) holds one of

* ``mnemonic``: the hotkey's BIP39 phrase (12-24 words), or
* ``seed``: its 32-byte sr25519 seed as hex (``0x`` optional),

and optionally ``coldkey_ss58`` (the coldkey's public address, announced with the axon). Without
it the coldkey address comes from the wallet's ``coldkeypub.txt`` when that public file exists,
else the hotkey's own address is used (fine for local mode; on chain set ``coldkey_ss58``).

Authentication: AppRole when ``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID`` (or the profile's
``vault.role_id`` / ``vault.secret_id``) are set, else the token (``VAULT_TOKEN`` /
``vault.token``). TLS settings follow hvac's environment (``VAULT_CACERT``, ``VAULT_CAPATH``).

Usage::

    bao kv put secret/natix/miner-hotkey mnemonic="word1 ... word12" coldkey_ss58=5F...
    VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... natix-miner run --vault.path natix/miner-hotkey

    from natix_miner.ops.secrets import wallet_from_vault
    wallet = wallet_from_vault(cfg)        # VaultWallet: .hotkey signs, .coldkeypub is public only

Every failure raises a :class:`VaultError` subclass whose message says what to fix and never
contains a secret: :class:`VaultUnreachable`, :class:`VaultSealed`, :class:`VaultAuthError`,
:class:`VaultSecretMissing`, :class:`VaultSecretInvalid`.
"""

import logging
import os
import sys
import time
import typing

from natix_miner.config import MinerConfig, VaultConfig
from natix_miner.ops.logs import register_secret

log = logging.getLogger("natix_miner.vault")

HOTKEY_FIELDS = ("mnemonic", "seed")


class VaultError(RuntimeError):
    """Base of every Vault problem; the message is safe to log."""


class VaultNotConfigured(VaultError):
    pass


class VaultUnreachable(VaultError):
    pass


class VaultSealed(VaultError):
    pass


class VaultAuthError(VaultError):
    pass


class VaultSecretMissing(VaultError):
    pass


class VaultSecretInvalid(VaultError):
    pass


# ----------------------------------------------------------------------------------------------
# The process that holds the key


PR_SET_DUMPABLE = 4


def disable_core_dumps() -> typing.Dict[str, typing.Any]:
    """Make sure no core file or same-user debugger can copy the hotkey out of this process.

    ``RLIMIT_CORE`` (0, 0): no core file on a crash, and the hard limit is 0 too, so nothing in the
    process (or its children) can raise it again. ``prctl(PR_SET_DUMPABLE, 0)`` (Linux): no core
    even through a ``core_pattern`` pipe, and other processes of the same user can neither ptrace
    it nor read ``/proc/<pid>/mem``. With ``ulimit -c unlimited`` a crash's core held the mnemonic
    as text and the seed and private-key bytes. The miner calls this first thing at start; returns
    what was set (``{"rlimit_core": (0, 0), "dumpable": 0}``; a step that failed is logged).

    Usage::

        from natix_miner.ops.secrets import disable_core_dumps
        disable_core_dumps()
    """
    import resource

    done: typing.Dict[str, typing.Any] = {}
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["rlimit_core"] = resource.getrlimit(resource.RLIMIT_CORE)
    except (OSError, ValueError) as exc:
        log.warning("could not disable core dumps (RLIMIT_CORE): %s", exc)
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            done["dumpable"] = 0
        else:
            log.warning("could not mark the process non-dumpable: errno %d", ctypes.get_errno())
    return done


# ----------------------------------------------------------------------------------------------
# The in-memory wallet


class VaultWallet:
    """What bittensor needs of a wallet to serve, holding keys in memory only.

    bittensor 10.5's Axon reads ``wallet.hotkey`` (signs responses, its ss58 goes in the axon info)
    and ``wallet.coldkeypub.ss58_address``; ``serve_axon`` also calls ``unlock_hotkey()`` and signs
    with ``wallet.hotkey``. ``bittensor_wallet.Wallet.set_hotkey`` always writes a key file, hence
    this class. The coldkey itself is never held: asking for it raises ``KeyFileError``.
    """

    def __init__(self, hotkey, coldkeypub, source: str = "vault", name: str = "vault", hotkey_name: str = "vault"):
        self._hotkey = hotkey
        self._coldkeypub = coldkeypub
        self.source = source
        self.name = name
        self.hotkey_str = hotkey_name
        self.path = "<memory>"

    @property
    def hotkey(self):
        return self._hotkey

    @property
    def hotkeypub(self):
        from bittensor_wallet import Keypair

        return Keypair(ss58_address=self._hotkey.ss58_address)

    @property
    def coldkeypub(self):
        return self._coldkeypub

    @property
    def coldkey(self):
        from bittensor_wallet.errors import KeyFileError

        raise KeyFileError("the miner never holds the coldkey (hotkey loaded from Vault)")

    def unlock_hotkey(self):
        return self._hotkey

    def unlock_hotkeypub(self):
        return self.hotkeypub

    def unlock_coldkeypub(self):
        return self._coldkeypub

    def unlock_coldkey(self):
        return self.coldkey

    def __repr__(self) -> str:
        return (f"VaultWallet(hotkey={self._hotkey.ss58_address}, coldkeypub={self._coldkeypub.ss58_address}, "
                f"source={self.source})")

    __str__ = __repr__


# ----------------------------------------------------------------------------------------------
# Client, errors


def _where(v: VaultConfig) -> str:
    return f"{v.mount}/{(v.path or '').strip('/')}"


def _translate(exc: BaseException, v: VaultConfig, doing: str) -> VaultError:
    import hvac.exceptions as hx
    import requests

    addr = v.addr
    if isinstance(exc, VaultError):
        return exc
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return VaultUnreachable(f"Vault at {addr} is unreachable while {doing} ({type(exc).__name__}); "
                                f"check VAULT_ADDR / --vault.addr, the network and that the server runs")
    if isinstance(exc, hx.VaultDown):
        return VaultSealed(f"Vault at {addr} is sealed (or in maintenance) while {doing}: unseal it "
                           f"(`bao operator unseal` / `vault operator unseal`) and restart the miner")
    if isinstance(exc, (hx.Forbidden, hx.Unauthorized)):
        return VaultAuthError(f"Vault at {addr} refused access while {doing} (permission denied): the token "
                              f"lacks a policy with read on {v.mount}/data/{(v.path or '').strip('/')}")
    if isinstance(exc, hx.InvalidPath):
        return VaultSecretMissing(f"no secret at {_where(v)} on {addr} (KV v2 mount {v.mount!r}, path {v.path!r}): "
                                  f"store it with `bao kv put -mount={v.mount} {v.path} mnemonic=...` "
                                  f"or fix --vault.path / --vault.mount")
    if isinstance(exc, hx.VaultError):
        return VaultError(f"Vault at {addr} answered an error while {doing}: {type(exc).__name__}")
    return VaultError(f"Vault at {addr}: {type(exc).__name__} while {doing}")


def vault_client(v: VaultConfig):
    """An authenticated ``hvac.Client`` (AppRole login when role/secret ids are set, else the token)."""
    import hvac

    if not v.addr:
        raise VaultNotConfigured("no Vault address: set VAULT_ADDR or --vault.addr (or vault.addr in the profile)")
    use_approle = bool(v.role_id and v.secret_id)
    if not use_approle and not v.token:
        if v.role_id or v.secret_id:
            raise VaultNotConfigured("AppRole needs both VAULT_ROLE_ID and VAULT_SECRET_ID")
        raise VaultNotConfigured("no Vault credentials: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID")
    for s in (v.token, v.secret_id):
        register_secret(s)
    client = hvac.Client(url=v.addr, token="" if use_approle else v.token, namespace=v.namespace,
                         timeout=v.timeout_s)
    if use_approle:
        try:
            resp = client.auth.approle.login(role_id=v.role_id, secret_id=v.secret_id)
        except hvac.exceptions.InvalidRequest:
            raise VaultAuthError(f"AppRole login at {v.addr} failed: invalid role id or secret id "
                                 f"(expired or already used?)") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise _translate(exc, v, "logging in with AppRole") from None
        register_secret(resp.get("auth", {}).get("client_token"))
        return client
    try:
        client.auth.token.lookup_self()
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
        raise VaultAuthError(f"Vault at {v.addr} rejected the token (wrong, expired or revoked): "
                             f"check VAULT_TOKEN") from None
    except Exception as exc:  # noqa: BLE001 - translated
        raise _translate(exc, v, "checking the token") from None
    return client


def read_secret(v: VaultConfig, client=None) -> typing.Dict[str, typing.Any]:
    """The latest version of the KV v2 secret at ``v.mount``/``v.path`` (values registered for redaction)."""
    if not v.path:
        raise VaultNotConfigured("no secret path: set --vault.path (or NATIX_VAULT_PATH)")
    client = client or vault_client(v)
    try:
        resp = client.secrets.kv.v2.read_secret_version(path=v.path.strip("/"), mount_point=v.mount,
                                                        raise_on_deleted_version=True)
    except Exception as exc:  # noqa: BLE001 - translated
        raise _translate(exc, v, f"reading {_where(v)}") from None
    data = (resp or {}).get("data", {}).get("data") or {}
    for key in HOTKEY_FIELDS:
        if isinstance(data.get(key), str):
            register_secret(data[key], digest=True)  # no plaintext copy: the caller wipes the value
    return data


def wipe(value: typing.Any) -> bool:
    """Zero a secret's characters in place once the key is built; returns whether it could.

    A ``bytearray`` always; a ``str`` when it is CPython's compact ASCII layout (what ``json``
    makes of a mnemonic or hex seed) and not interned. Python cannot promise there is no other
    copy (the HTTP client's freed buffers), but the live object that held the phrase no longer
    does, and with :func:`disable_core_dumps` nothing writes the process memory to disk."""
    if isinstance(value, bytearray):
        value[:] = bytes(len(value))
        return True
    if type(value) is not str or len(value) < 2 or not value.isascii() or sys.implementation.name != "cpython":
        return False
    import ctypes

    # PyASCIIObject.state after refcount, type, length and hash: interned (2 bits), kind (3),
    # compact, ascii. An interned string is shared with every other use of the same text.
    state = ctypes.c_uint32.from_address(id(value) + 32).value
    if state & 0b11 or not (state >> 5) & 1 or not (state >> 6) & 1:
        return False
    n = len(value)
    ctypes.memset(id(value) + sys.getsizeof(value) - n - 1, 0, n)
    return True


def keypair_from_secret(data: typing.Mapping[str, typing.Any], where: str = "the secret"):
    """An sr25519 Keypair from ``mnemonic`` or ``seed``; errors never echo the value."""
    from bittensor_wallet import Keypair

    mnemonic, seed = data.get("mnemonic"), data.get("seed")
    if mnemonic:
        phrase = str(mnemonic)
        if phrase.split() != phrase.split(" "):  # only then a normalised copy (wiped below)
            phrase = " ".join(phrase.split())
        try:
            return Keypair.create_from_mnemonic(phrase)
        except Exception:  # noqa: BLE001 - the library's message could quote the phrase
            raise VaultSecretInvalid(f"{where}: 'mnemonic' is not a valid BIP39 phrase") from None
        finally:
            if phrase is not mnemonic:
                wipe(phrase)
    if seed:
        s = str(seed)
        hexdigits = s[2:] if s[:2].lower() == "0x" else s
        if len(hexdigits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexdigits):
            raise VaultSecretInvalid(f"{where}: 'seed' must be 32 bytes of hex (64 digits, 0x optional)")
        lower = hexdigits.lower()
        try:
            return Keypair.create_from_seed(lower)
        finally:
            for copy in {id(x): x for x in (hexdigits, lower) if x is not s}.values():
                wipe(copy)
    raise VaultSecretInvalid(f"{where}: holds neither 'mnemonic' nor 'seed' (keys present: {sorted(data)})")


def _coldkeypub(cfg: MinerConfig, data: typing.Mapping[str, typing.Any], hotkey):
    from bittensor_wallet import Keypair
    from bittensor_wallet.utils import is_valid_ss58_address

    addr = data.get("coldkey_ss58") or data.get("coldkeypub")
    if addr:
        if not is_valid_ss58_address(str(addr)):
            raise VaultSecretInvalid(f"vault {_where(cfg.vault)}: coldkey_ss58 is not a valid ss58 address")
        return Keypair(ss58_address=str(addr))
    pub_file = os.path.join(os.path.expanduser(cfg.wallet.path), cfg.wallet.name, "coldkeypub.txt")
    if os.path.exists(pub_file):
        import bittensor_wallet

        return bittensor_wallet.Wallet(name=cfg.wallet.name, path=cfg.wallet.path).coldkeypub
    if not cfg.local:
        log.warning("vault secret has no coldkey_ss58 and %s is absent: announcing the hotkey address as "
                    "coldkey; add coldkey_ss58 to the secret", pub_file)
    return Keypair(ss58_address=hotkey.ss58_address)


def wallet_from_vault(cfg: MinerConfig) -> VaultWallet:
    """Read the hotkey secret and build a :class:`VaultWallet` (see the module docstring)."""
    v = cfg.vault
    t0 = time.perf_counter()
    data = read_secret(v)
    try:
        hotkey = keypair_from_secret(data, where=f"vault {_where(v)}")
        wallet = VaultWallet(hotkey, _coldkeypub(cfg, data, hotkey), source=f"vault:{_where(v)}",
                             name=cfg.wallet.name, hotkey_name=cfg.wallet.hotkey)
    finally:
        for key in HOTKEY_FIELDS:  # the key exists now (or never will): no text copy of it stays
            wipe(data.get(key))
        del data
    log.info("hotkey %s loaded from Vault %s (%s) in %.2fs", hotkey.ss58_address, v.addr, _where(v),
             time.perf_counter() - t0)
    return wallet


def vault_health(v: VaultConfig, timeout_s: typing.Optional[float] = None) -> typing.Dict[str, typing.Any]:
    """``{"ok": bool, "detail": str}`` from the unauthenticated ``sys/health`` endpoint (for /readyz)."""
    import hvac
    import requests

    if not v.addr:
        return {"ok": False, "detail": "no Vault address configured"}
    try:
        client = hvac.Client(url=v.addr, token="", namespace=v.namespace, timeout=timeout_s or v.timeout_s)
        res = client.sys.read_health_status(method="GET", standby_ok=True)
    except requests.exceptions.RequestException as exc:
        return {"ok": False, "detail": f"unreachable ({type(exc).__name__})"}
    except Exception as exc:  # noqa: BLE001 - health must answer
        return {"ok": False, "detail": f"error ({type(exc).__name__})"}
    if isinstance(res, dict):
        body, code = res, 200
    else:
        code = getattr(res, "status_code", 0)
        try:
            body = res.json()
        except Exception:  # noqa: BLE001
            body = {}
    if body.get("sealed"):
        return {"ok": False, "detail": "sealed"}
    if body.get("initialized") is False:
        return {"ok": False, "detail": "not initialized"}
    if code in (200, 429, 472, 473):
        return {"ok": True, "detail": "standby" if body.get("standby") else "active"}
    return {"ok": False, "detail": f"health status {code}"}
