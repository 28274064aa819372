"""One process, many hotkeys: N axons in front of ONE engine.

Each entry of the ``--hotkeys`` file (``NATIX_HOTKEYS``) gets its own :class:`~natix_miner.miner.neuron.Miner`:
its wallet (files, or Vault through ``natix_miner.ops.secrets``), registration check and UID, axon and
port, gate (blacklist and priority from the metagraph), replay nonces, status line and readiness.
All of them share one engine: its admission queue (by stake, across every hotkey), its batchers and its
image-hash cache with in-flight de-duplication, so an image that a validator sends to several of the
hotkeys is computed once (counted in ``natix_cache_shared_hits_total{hotkey}``). A hotkey whose
wallet, registration or axon fails at start, that is deregistered at a resync, or whose axon stops
listening, is logged and dropped; the others keep serving. The process stops only when none is left
(with the exit code of the last failure, ``natix_miner/miner/errors.py``).

The file is YAML, a list of entries (``deploy/hotkeys.example.yaml``)::

    - {name: hk1, wallet_name: miner, wallet_hotkey: hk1, port: 8091}
    - {name: hk2, wallet_name: miner, wallet_hotkey: hk2, port: 8092}
    - {name: vaulted, wallet_name: miner, wallet_hotkey: hk3, port: 8093, vault_path: natix/hk3}

Usage::

    python neurons/miner.py --hotkeys hotkeys.yaml --netuid 72 --profile h100x2 --metrics.port 9100
    entries = load_hotkeys("hotkeys.yaml", local=False)     # strict; ConfigError: one line naming the fix
    group = MinerGroup(cfg, hooks=hooks)                     # cfg.hotkeys names the file
    asyncio.run(group.run())
"""

import asyncio
import collections
import difflib
import logging
import threading
import time
import typing

import pydantic

from natix_miner.config import MinerConfig
from natix_miner.miner import errors
from natix_miner.miner.admission import Admission
from natix_miner.miner.errors import ConfigError, StartupError
from natix_miner.miner.hooks import MinerHooks

log = logging.getLogger("natix_miner.miner")

FLAG = "--hotkeys / NATIX_HOTKEYS"
# start-up failures that end one hotkey, not the process (configuration, chain and models are shared)
PER_HOTKEY_CODES = (errors.WALLET, errors.REGISTRATION, errors.PERMISSIONS, errors.PORT, errors.SERVE)


class HotkeyEntry(pydantic.BaseModel):
    """One hotkey served by this process."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Short name used in logs, ``/readyz`` and ``natix_miner_info{name}`` (letters, digits, ``_.-``)."""
    wallet_name: str = pydantic.Field(min_length=1)
    """Coldkey wallet name (``--wallet.name`` for this hotkey); wallets live under ``--wallet.path``."""
    wallet_hotkey: str = pydantic.Field(min_length=1)
    """Hotkey name inside that wallet (``--wallet.hotkey`` for this hotkey)."""
    port: int = pydantic.Field(ge=0, le=65535)
    """The axon's port (``--axon.port`` for this hotkey); 0 picks a free one, in local mode only."""
    vault_path: typing.Optional[str] = None
    """KV v2 path of this hotkey's secret in Vault/OpenBao (``--vault.path``); the address, mount and
    credentials are the process's (``VAULT_ADDR``, ``--vault.mount``...). Unset: the wallet files."""
    external_port: typing.Optional[int] = pydantic.Field(default=None, ge=1, le=65535)
    """Port announced on chain when a NAT or proxy maps it (``--axon.external_port``); default: ``port``."""


def _entry_errors(exc: pydantic.ValidationError, rows: list) -> typing.List[str]:
    """``entry N (name): problem`` per error; an unknown key names the nearest known one (and then the
    key it misspelt is not also reported missing)."""
    known = list(HotkeyEntry.model_fields)
    out: typing.List[typing.Tuple[typing.Any, str, str]] = []  # (entry, missing key or "", line)
    hinted = set()
    for e in exc.errors():
        loc = list(e["loc"])
        i = loc.pop(0) if loc and isinstance(loc[0], int) else None
        row = rows[i] if i is not None and i < len(rows) and isinstance(rows[i], dict) else {}
        where = f"entry {i}" + (f" ({row['name']})" if row.get("name") else "") if i is not None else "the file"
        key = ".".join(map(str, loc))
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]}?)" if near else f" (known: {', '.join(known)})"
            hinted |= {(i, near[0])} if near else set()
            out.append((i, "", f"{where}: unknown key {key!r}{hint}"))
        elif e["type"] == "missing":
            out.append((i, key, f"{where}: {key} is required"))
        elif e["type"] == "model_type":
            out.append((i, "", f"{where}: expected a mapping {{name, wallet_name, wallet_hotkey, port, vault_path?}}"))
        else:
            out.append((i, "", f"{where}: {key}: {e['msg'].removeprefix('Value error, ')}"))
    return [line for i, missing, line in out if not missing or (i, missing) not in hinted]


def load_hotkeys(path: str, local: bool = False) -> typing.List[HotkeyEntry]:
    """The entries of a hotkeys file, validated: strict keys (an unknown one names the nearest),
    unique names, ports and wallets, port 0 only in local mode. Any problem is one
    :class:`ConfigError` line (exit code 2) naming the file and every bad entry."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            rows = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{FLAG}: cannot read {path} ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{FLAG}: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{FLAG}: {path} must be a non-empty YAML list of {{name, wallet_name, wallet_hotkey, "
                          f"port, vault_path?}} (deploy/hotkeys.example.yaml)")
    try:
        entries = pydantic.TypeAdapter(typing.List[HotkeyEntry]).validate_python(rows)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"{FLAG}: {path}: " + "; ".join(_entry_errors(exc, rows))) from None
    problems = []
    for what, key in (("name", lambda e: e.name), ("port", lambda e: e.port or None),
                      ("wallet", lambda e: None if e.vault_path else f"{e.wallet_name}/{e.wallet_hotkey}"),
                      ("vault_path", lambda e: e.vault_path)):
        seen: typing.Dict[typing.Any, str] = {}
        for e in entries:
            k = key(e)
            if k is not None and k in seen:
                problems.append(f"{what} {k} is used by both {seen[k]} and {e.name}")
            elif k is not None:
                seen[k] = e.name
    if not local:
        problems += [f"{e.name}: port 0 (a free port) is for --local only; give it a fixed port"
                     for e in entries if e.port == 0]
    if problems:
        raise ConfigError(f"{FLAG}: {path}: " + "; ".join(problems))
    return entries


REPLACED_FLAGS = (("--wallet.name", "wallet.name"), ("--wallet.hotkey", "wallet.hotkey"), ("--axon.port", "axon.port"),
                  ("--axon.external_port", "axon.external_port"), ("--vault.path", "vault.path"))


def replaced_flags(namespace) -> typing.List[str]:
    """Warnings for single-hotkey flags given on the command line that each ``--hotkeys`` entry replaces."""
    given = vars(namespace) if namespace is not None else {}
    return [f"{flag} {given[key]} is not used with --hotkeys: each entry of the file sets its own"
            for flag, key in REPLACED_FLAGS if key in given]


def entry_config(cfg: MinerConfig, entry: HotkeyEntry) -> MinerConfig:
    """The process's configuration for one entry: its wallet, port and Vault path; everything else
    (chain, blacklist, limits, profile, the parsed cascade) shared."""
    axon = {"port": entry.port}
    if entry.external_port:
        axon["external_port"] = entry.external_port
    return cfg.model_copy(update={
        "hotkeys": None,
        "wallet": cfg.wallet.model_copy(update={"name": entry.wallet_name, "hotkey": entry.wallet_hotkey}),
        "axon": cfg.axon.model_copy(update=axon),
        "vault": cfg.vault.model_copy(update={"path": entry.vault_path}),
    })


class SharedHits:
    """Counts answers that one hotkey got from a result another hotkey's request computed (a cache hit
    or a join of the in-flight computation), whatever order the answers complete in.

    Usage::

        ledger = SharedHits()
        ledger.observe("hk1", result)   # per answer; result.cached and result.image_sha256 say enough
        ledger.counts                   # {"hk2": 1}: hk2's answers computed for another hotkey
    """

    def __init__(self, max_images: int = 4096):
        self.max_images = max_images
        self.counts: typing.Counter[str] = collections.Counter()
        # sha -> [computing hotkey or None, hotkeys answered from the cache before it was known]
        self._images: "collections.OrderedDict[str, list]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def observe(self, name: str, result: typing.Any) -> None:
        sha = getattr(result, "image_sha256", None)
        if not sha or getattr(result, "fallback", False):
            return
        with self._lock:
            entry = self._images.setdefault(sha, [None, []])
            self._images.move_to_end(sha)
            if getattr(result, "cached", False):
                if entry[0] is None:
                    entry[1].append(name)
                elif entry[0] != name:
                    self.counts[name] += 1
            else:  # this request computed the result
                entry[0] = name
                for other in entry[1]:
                    if other != name:
                        self.counts[other] += 1
                entry[1] = []
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)


class _HotkeyHooks(MinerHooks):
    """One miner's hooks: the shared-hit ledger, then the process's hooks for this hotkey."""

    def __init__(self, group: "MinerGroup", name: str, inner: MinerHooks):
        self.group, self.name, self.inner = group, name, inner

    def started(self, miner):
        self.inner.started(miner)

    def request(self, route, outcome, seconds, result=None, hotkey=None):
        if result is not None:
            try:
                self.group.shared.observe(self.name, result)
            except Exception:  # noqa: BLE001 - counting never breaks an answer
                pass
        self.inner.request(route, outcome, seconds, result=result, hotkey=hotkey)

    def blacklisted(self, route, reason, hotkey=None):
        self.inner.blacklisted(route, reason, hotkey=hotkey)

    def status(self, status):
        self.inner.status(status)

    def stopped(self):
        self.inner.stopped()


def _hooks_for(hooks: MinerHooks, name: str) -> MinerHooks:
    view = getattr(hooks, "for_hotkey", None)
    return view(name) if callable(view) else hooks


class MinerGroup:
    """N per-hotkey miners and the one engine they share; runs like a :class:`Miner`.

    ``wallets``: ready wallets by entry name (tests); ``entries``: instead of reading ``cfg.hotkeys``."""

    def __init__(self, cfg: MinerConfig, hooks: typing.Optional[MinerHooks] = None, engine=None, subtensor=None,
                 engine_factory=None, wallets: typing.Optional[typing.Mapping[str, typing.Any]] = None,
                 entries: typing.Optional[typing.Sequence[HotkeyEntry]] = None):
        from natix_miner.miner.neuron import Miner

        self.cfg = cfg
        self.entries = list(entries) if entries is not None else load_hotkeys(cfg.hotkeys, cfg.local)
        if not self.entries:
            raise ConfigError(f"{FLAG}: no hotkey to serve (the file lists none)")
        self.profile = engine.profile if engine is not None else cfg.load_cascade()
        self.engine = engine
        self.hooks = hooks or MinerHooks()
        self.subtensor = subtensor
        self.admission = Admission(cfg.axon.max_inflight, cfg.axon.max_waiting)  # one queue, by stake, for all
        self.shared = SharedHits(max(1, self.profile.cache.max_entries))
        self.miners: typing.Dict[str, Miner] = {}  # name -> live miner
        self.dropped: typing.Dict[str, str] = {}  # name -> why
        self._codes: typing.Dict[str, int] = {}
        self._errors: typing.List[BaseException] = []
        for e in self.entries:
            self.miners[e.name] = Miner(entry_config(cfg, e), engine=engine,
                                        hooks=_HotkeyHooks(self, e.name, _hooks_for(self.hooks, e.name)),
                                        wallet=(wallets or {}).get(e.name), subtensor=subtensor,
                                        engine_factory=engine_factory, admission=self.admission)
            self.miners[e.name].name = e.name
        self.every = dict(self.miners)  # name -> miner, dropped ones too: their natix_axon_serving stays 0
        self._factory = next(iter(self.miners.values())).engine_factory
        self.loop: typing.Optional[asyncio.AbstractEventLoop] = None
        self._stop: typing.Optional[asyncio.Event] = None
        self._last_sync = 0.0
        self.serving = False

    # -- what ops reads (metrics, /readyz) --------------------------------------------------------
    @property
    def axons(self) -> typing.Dict[str, typing.Any]:
        """ss58 -> miner for every hotkey whose wallet loaded, dropped ones included (``serving`` False)."""
        return {m.wallet.hotkey.ss58_address: m for m in self.every.values() if m.wallet is not None}

    @property
    def shared_hits(self) -> typing.Dict[str, float]:
        """Answers per hotkey (ss58) computed for another hotkey of this process."""
        return {m.wallet.hotkey.ss58_address: float(self.shared.counts.get(name, 0))
                for name, m in self.miners.items() if m.wallet is not None}

    def listening(self) -> bool:
        return any(m.listening() for m in self.miners.values())

    def readiness(self, extra=None) -> typing.Tuple[bool, dict]:
        """``/readyz`` of the group: the engine's checks once, the axon checks of every hotkey; ready
        when the engine is and every live hotkey's axon serves (dropped ones are listed, not failing)."""
        from natix_miner.ops.readiness import CHECKS, evaluate

        per_axon = ("axon", "connections")
        live = list(self.miners.items())
        if not live:
            return False, {"ready": False, "checks": {}, "failing": ["hotkeys"], "dropped": dict(self.dropped)}
        engine_checks = [(n, f) for n, f in CHECKS if n not in per_axon]
        ok, body = evaluate(live[0][1], extra=extra, checks=engine_checks)
        body.pop("hotkey", None)
        hotkeys = {}
        for name, m in live:
            m_ok, m_body = evaluate(m, checks=[(n, f) for n, f in CHECKS if n in per_axon])
            hotkeys[name] = {"ready": m_ok, "hotkey": m_body.get("hotkey"), **m_body["checks"]}
            if not m_ok:
                body["failing"].append(f"{name}:{','.join(m_body['failing'])}")
        body["hotkeys"], body["dropped"] = hotkeys, dict(self.dropped)
        body["ready"] = not body["failing"]
        return body["ready"], body

    # -- lifecycle --------------------------------------------------------------------------------
    def _drop(self, name: str, exc: BaseException) -> None:
        """Log and stop one hotkey; the others keep serving."""
        from natix_miner.ops.startup_checks import InsecurePermissions

        m = self.miners.pop(name, None)
        if m is None:
            return
        code = errors.PERMISSIONS if isinstance(exc, InsecurePermissions) else getattr(exc, "code", errors.UNEXPECTED)
        # the entry's port is in the file, not in --axon.port
        why = str(exc).replace("with --axon.port / NATIX_AXON_PORT", f"for {name} in {self.cfg.hotkeys or FLAG}")
        self.dropped[name], self._codes[name] = why, code
        self._errors.append(exc)
        try:
            m.close_axon()
        except Exception as close_exc:  # noqa: BLE001 - already failing; the first error is the one to report
            log.debug("closing %s: %s", name, close_exc)
        log.error("hotkey %s dropped (%d left): %s", name, len(self.miners), why)

    def _none_left(self) -> StartupError:
        last = self._errors[-1] if self._errors else None
        code = self._codes.get(list(self.dropped)[-1], errors.UNEXPECTED) if self.dropped else errors.UNEXPECTED
        detail = "; ".join(f"{n}: {why}" for n, why in self.dropped.items())
        err = StartupError(code, f"no hotkey of {self.cfg.hotkeys or 'the group'} is left to serve ({detail})")
        err.__cause__ = last
        return err

    async def _each(self, phase: str) -> None:
        """Run one start phase on every live miner; a per-hotkey failure drops that hotkey."""
        from natix_miner.ops.startup_checks import InsecurePermissions

        for name, m in list(self.miners.items()):
            try:
                await getattr(m, phase)()
            except InsecurePermissions as exc:
                self._drop(name, exc)
            except StartupError as exc:
                if exc.code not in PER_HOTKEY_CODES:
                    raise
                self._drop(name, exc)
        if not self.miners:
            raise self._none_left()

    async def start(self) -> None:
        """Chain and public IP once -> every hotkey's wallet, registration and bound port -> the shared
        engine, loaded once -> every axon live (``serve_axon`` each). A hotkey failing its own steps is
        dropped; a shared step failing (chain, models, configuration) stops the process."""
        from natix_miner.miner.neuron import _public_ip, connect_chain
        from natix_miner.ops.secrets import disable_core_dumps

        disable_core_dumps()
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if not self.cfg.local:
            if self.subtensor is None:
                self.subtensor = await self.loop.run_in_executor(None, connect_chain, self.cfg)
            ip = self.cfg.axon.external_ip or await self.loop.run_in_executor(None, _public_ip)
            for m in self.miners.values():
                m.subtensor, m._external_ip = self.subtensor, ip
        await self._each("prepare")
        seen: typing.Dict[str, str] = {}
        for name, m in self.miners.items():
            ss58 = m.wallet.hotkey.ss58_address
            if ss58 in seen:
                raise ConfigError(f"{FLAG}: {seen[ss58]} and {name} are the same hotkey {ss58}; list each hotkey once")
            seen[ss58] = name
        if self.engine is None:
            self.engine = self._factory(self.profile)
        for m in self.miners.values():
            m.engine = self.engine
        first = next(iter(self.miners.values()))
        await first.load_engine()  # exit 7 on failure: no hotkey can answer without it
        for m in self.miners.values():
            m.degraded = first.degraded
        await self._each("go_live")
        self._last_sync = time.time()
        self.serving = True
        log.info("serving %d hotkeys on one engine (profile %s): %s", len(self.miners), self.profile.name,
                 ", ".join(f"{n} {m.wallet.hotkey.ss58_address} port {m.port}" for n, m in self.miners.items()))
        if self.dropped:
            log.warning("hotkeys dropped at start: %s", "; ".join(f"{n}: {w}" for n, w in self.dropped.items()))
        self.hooks.started(self)

    def _check_axons(self) -> None:
        for name, m in list(self.miners.items()):
            if m.serving and not m.listening():
                self._drop(name, StartupError(errors.PORT, f"the axon on port {m.port} stopped listening"))

    async def _resync(self) -> None:
        """One metagraph read for every hotkey (not N); a hotkey that is no longer registered is dropped."""
        self._last_sync = time.time()
        if self.cfg.local or self.subtensor is None:
            for m in self.miners.values():
                m.report_status()
            return
        try:
            mg = await self.loop.run_in_executor(None, self.subtensor.metagraph, self.cfg.chain.netuid)
        except Exception as exc:  # keep serving on a stale metagraph
            log.warning("metagraph sync failed: %s", exc)
            return
        for name, m in list(self.miners.items()):
            m.apply_metagraph(mg)
            if m.uid is None:
                self._drop(name, StartupError(errors.REGISTRATION, f"hotkey {m.wallet.hotkey.ss58_address} is no "
                                                                   f"longer registered on netuid {self.cfg.chain.netuid}"))

    def request_stop(self) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)

    async def stop(self) -> None:
        self.serving = False
        for m in self.miners.values():
            m.close_axon()
        if self.engine is not None:
            await self.engine.close()
        self.hooks.stopped()

    async def run(self, ready: typing.Optional[threading.Event] = None) -> None:
        """Start, then resync every ``sync_interval_s`` (and watch the axons every few seconds) until
        SIGINT/SIGTERM or no hotkey is left."""
        from natix_miner.miner.neuron import run_until_stopped

        await run_until_stopped(self, self._tick, min(5.0, self.cfg.sync_interval_s), ready)

    async def _tick(self) -> None:
        self._check_axons()
        if time.time() - self._last_sync >= self.cfg.sync_interval_s:
            await self._resync()
        if not self.miners:
            raise self._none_left()
