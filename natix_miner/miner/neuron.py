"""The miner neuron: axon wiring, blacklist, priority, metagraph sync, local mode.

The miner layer never imports torch: it hands base64 text to the engine's ``predict`` and writes
back a probability that is always finite and in [0, 1]. The engine runs on the main event loop;
the axon (uvicorn) runs on its own thread and loop, and hands work over with
``run_coroutine_threadsafe``.

Usage::

    cfg = build_config(["--local", "--axon.port", "8091"])     # natix_miner.miner.args; parses the profile once
    asyncio.run(Miner(cfg).run())                               # the engine: local_engine(cfg.cascade)
    asyncio.run(Miner(cfg, engine=my_client).run())             # any EngineClient (natix_miner/engine/client.py)
"""

import asyncio
import logging
import os
import signal
import threading
import time
import typing

from natix_miner.config import MinerConfig
from natix_miner.engine.client import EngineClient, EngineFactory, EngineUnavailable, engine_factory_for
from natix_miner.engine.result import safe_probability
from natix_miner.miner import errors
from natix_miner.miner.admission import Admission, Overloaded
from natix_miner.miner.errors import PortInUse, StartupError
from natix_miner.miner.gate import Gate
from natix_miner.miner.hooks import MinerHooks
from natix_miner.miner.limits import CALLER, signed_hotkey
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse

log = logging.getLogger("natix_miner.miner")

TRANSPORT_MARGIN_S = 1.0  # leave this much of the validator's timeout for the network
DEFAULT_TIMEOUT_S = 9.0


class NotRegisteredError(StartupError):
    """The hotkey is not registered on the subnet: nothing to serve."""

    def __init__(self, message: str):
        super().__init__(errors.REGISTRATION, message)


def chain_endpoint(cfg: MinerConfig) -> str:
    """The endpoint the miner talks to: ``--subtensor.chain_endpoint``, else the network's entry point."""
    if cfg.chain.chain_endpoint:
        return cfg.chain.chain_endpoint
    try:
        from bittensor.core.settings import NETWORK_MAP

        return NETWORK_MAP.get(cfg.chain.network, cfg.chain.network)
    except ImportError:  # pragma: no cover
        return cfg.chain.network


def connect_chain(cfg: MinerConfig):
    """A ``bt.Subtensor`` for the configured network; an unreachable endpoint is a :class:`StartupError`
    naming it (exit code 4). Tests replace this function or pass ``subtensor=`` to :class:`Miner`."""
    import bittensor as bt

    endpoint = chain_endpoint(cfg)
    try:
        return bt.Subtensor(network=cfg.chain.chain_endpoint or cfg.chain.network)
    except Exception as exc:  # noqa: BLE001 - websockets, OSError, timeouts: all mean "not reachable"
        raise StartupError(errors.CHAIN, f"cannot reach subtensor at {endpoint} ({type(exc).__name__}: {exc}); "
                                         f"check --subtensor.network / --subtensor.chain_endpoint (NATIX_NETWORK / "
                                         f"NATIX_CHAIN_ENDPOINT) or run a local subtensor node") from exc


def find_uid(metagraph, hotkey: str) -> typing.Optional[int]:
    """The UID of ``hotkey`` in a metagraph (``hotkeys`` and optional ``uids``), or None."""
    hotkeys = list(metagraph.hotkeys)
    if hotkey not in hotkeys:
        return None
    i = hotkeys.index(hotkey)
    uids = getattr(metagraph, "uids", None)
    try:
        return int(uids[i]) if uids is not None else i
    except (IndexError, TypeError, ValueError):
        return i


def _at(values, i: typing.Optional[int]) -> float:
    try:
        return float(values[i]) if values is not None and i is not None else 0.0
    except (IndexError, TypeError, ValueError):
        return 0.0


def _short(hotkey: typing.Optional[str]) -> str:
    return f"{hotkey[:8]}..." if hotkey and len(hotkey) > 8 else (hotkey or "?")


class Miner:
    def __init__(self, cfg: MinerConfig, engine: typing.Optional[EngineClient] = None,
                 hooks: typing.Optional[MinerHooks] = None, wallet=None, subtensor=None,
                 engine_factory: typing.Optional[EngineFactory] = None,
                 admission: typing.Optional[Admission] = None):
        """``engine``: any :class:`EngineClient` (started at :meth:`start` unless already ``ready``); without
        one, ``engine_factory(profile)`` builds it at start (default ``engine_factory_for(cfg)``: the in-process
        cascade, imported only then, or with ``--engine.ray`` the Ray Serve client). ``subtensor``: a chain client to use instead of
        ``bt.Subtensor(network)`` (anything with ``metagraph(netuid)`` and ``serve_axon(netuid=, axon=)``;
        tests pass a local chain). ``admission``: an :class:`Admission` shared with other miners of one
        engine (``natix_miner.miner.hotkeys.MinerGroup``; default: this miner's own)."""
        self.cfg = cfg
        self.profile = engine.profile if engine is not None else cfg.load_cascade()  # parsed once, in the config
        self.engine: typing.Optional[EngineClient] = engine
        self.engine_factory: EngineFactory = engine_factory or engine_factory_for(cfg)  # --engine.ray: Ray Serve
        self.hooks = hooks or MinerHooks()
        self.wallet = wallet
        self.gate = Gate(cfg.blacklist, local=cfg.local)
        self.admission = admission or Admission(cfg.axon.max_inflight, cfg.axon.max_waiting)  # runs on self.loop
        self.axon = None
        self.governor = None  # miner/limits.py ConnectionGovernor, built with the axon
        self.replay = None  # miner/nonces.py ReplayGuard, built with the axon
        self.subtensor = subtensor
        self.metagraph = None
        self.loop: typing.Optional[asyncio.AbstractEventLoop] = None
        self.serving = False
        self._stop: typing.Optional[asyncio.Event] = None  # created inside the loop
        self._last_sync = 0.0
        self.started_at = time.time()
        self.uid: typing.Optional[int] = None
        self._answers = 0  # answered since the last status line
        self._window_start = time.time()
        self._axon_socket = None
        self._external_ip: typing.Optional[str] = None  # looked up at start when --axon.external_ip is not given
        self.degraded: typing.List[str] = []  # tiers with no loadable expert (served with --allow-degraded)
        self.name: typing.Optional[str] = None  # the --hotkeys entry this miner serves (in its log lines)

    # -- request path ------------------------------------------------------------------------
    def _budget(self, synapse) -> float:
        timeout = synapse.timeout if synapse.timeout else DEFAULT_TIMEOUT_S
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            timeout = DEFAULT_TIMEOUT_S
        return max(0.2, min(self.profile.deadline_s, timeout - TRANSPORT_MARGIN_S))

    async def _answer(self, synapse, route: str):
        t0 = time.perf_counter()
        budget = self._budget(synapse)
        hotkey = signed_hotkey()  # the verified header, never the body's unsigned dendrite fields
        if synapse.testnet_label not in (-1, None):
            log.debug("testnet_label=%s (logged, never trusted)", synapse.testnet_label)
        outcome, result = "error", None
        try:
            deadline = time.monotonic() + budget
            work = self.admission.run(self.gate.priority(hotkey), deadline,
                                      lambda: self.engine.predict(synapse.image, deadline))
            cfut = asyncio.run_coroutine_threadsafe(work, self.loop)
            result = await asyncio.wait_for(asyncio.wrap_future(cfut), timeout=budget + 0.25)
            synapse.prediction = safe_probability(result.probability, self.profile.fallback_probability)
            outcome = "fallback" if result.fallback else "answered"
        except Overloaded as exc:  # more callers than the engine serves: answer in time, by stake
            outcome = "shed"
            log.debug("overloaded (%s); answering the fallback", exc.reason)
            synapse.prediction = safe_probability(self.profile.fallback_probability)
        except Exception as exc:  # noqa: BLE001 - the answer must always exist
            log.error("predict failed (%s: %s); answering the fallback", type(exc).__name__, exc)
            synapse.prediction = safe_probability(self.profile.fallback_probability)
        if isinstance(synapse, ExtendedImageSynapse):
            synapse.model_url = self.cfg.model_url
        seconds = time.perf_counter() - t0
        if outcome in ("answered", "fallback"):
            self._answers += 1
        tiers = ",".join(getattr(result, "tiers_run", None) or []) or "-"
        log.info("%s %s from %s: p=%.4f tiers=%s %.0f ms%s%s", outcome, route, _short(hotkey), synapse.prediction,
                 tiers, seconds * 1000, " (demo model)" if self.profile.demo else "",
                 f" on {self.name}" if self.name else "")
        self.hooks.request(route, outcome, seconds, result=result, hotkey=hotkey)
        return synapse

    # bittensor's attach() inspects these signatures: parameter named `synapse`, real annotations.
    def _attach(self, axon) -> None:
        miner = self

        async def forward_image(synapse: ImageSynapse) -> ImageSynapse:
            return await miner._answer(synapse, "ImageSynapse")

        async def forward_extended(synapse: ExtendedImageSynapse) -> ExtendedImageSynapse:
            return await miner._answer(synapse, "ExtendedImageSynapse")

        axon.attach(forward_fn=forward_image)
        axon.attach(forward_fn=forward_extended)
        self._guard_routes(axon)  # blacklist, verify and priority of every route, the built-in one included

    def _guard_routes(self, axon) -> None:
        """Every synapse route, bittensor's built-in ``/Synapse`` included (it has no blacklist of its
        own), gets the blacklist, the replay-safe verify and the priority, all on the signed headers
        and before the body is read. Other paths (``/docs``...) never reach a route: the axon's
        middleware refuses names it does not know before reading a body."""
        miner = self
        axon_hotkey = self.wallet.hotkey.ss58_address

        def blacklist_for(name):
            async def blacklist(synapse) -> typing.Tuple[bool, str]:
                return miner._blacklist(synapse, name)

            return blacklist

        async def verify(synapse) -> None:
            miner.replay.verify(synapse, axon_hotkey)
            caller = CALLER.get()
            if caller is not None and not caller.verified(synapse.dendrite.hotkey):
                raise RuntimeError(f"too many requests of {synapse.dendrite.hotkey} at once "
                                   f"(axon.max_requests_per_hotkey={self.cfg.axon.max_requests_per_hotkey})")

        async def priority(synapse) -> float:
            return miner.gate.priority(getattr(synapse.dendrite, "hotkey", None))

        for name in list(axon.forward_class_types):
            axon.blacklist_fns[name] = blacklist_for(name)
            axon.verify_fns[name] = verify
            axon.priority_fns[name] = priority

    def _blacklist(self, synapse, route: str) -> typing.Tuple[bool, str]:
        hotkey = getattr(synapse.dendrite, "hotkey", None)
        blocked, reason = self.gate.check(hotkey)
        if blocked:
            self.hooks.blacklisted(route, reason, hotkey=hotkey)
            log.info("blacklisted %s on %s: %s", hotkey, route, reason)
        return blocked, reason

    # -- chain -------------------------------------------------------------------------------
    def sync(self, first: bool = False) -> None:
        """Refresh the metagraph (stakes, permits) for the gate, then log the status line. In local mode
        only the status line (from ``--local.metagraph``)."""
        if self.cfg.local or self.subtensor is None:
            self.report_status()
            return
        try:
            mg = self.subtensor.metagraph(self.cfg.chain.netuid)
        except Exception as exc:
            if first:
                raise StartupError(errors.CHAIN, f"cannot read the metagraph of netuid {self.cfg.chain.netuid} from "
                                                 f"{chain_endpoint(self.cfg)} ({type(exc).__name__}: {exc}); check "
                                                 f"--subtensor.chain_endpoint / NATIX_CHAIN_ENDPOINT") from exc
            raise
        self.apply_metagraph(mg, first=first)

    def apply_metagraph(self, mg, first: bool = False) -> None:
        """A fetched metagraph: the gate's stakes and permits, this hotkey's UID (not registered: a
        :class:`NotRegisteredError` at start, an error line later), then the status line."""
        stakes = [float(s) for s in mg.S]
        self.gate.update(list(mg.hotkeys), stakes, [bool(p) for p in mg.validator_permit])
        self.metagraph = mg
        self._last_sync = time.time()
        self.uid = find_uid(mg, self.wallet.hotkey.ss58_address)
        if self.uid is None:
            msg = (f"hotkey {self.wallet.hotkey.ss58_address} is not registered on netuid "
                   f"{self.cfg.chain.netuid} ({self.cfg.chain.network}); register it with "
                   f"`btcli subnet register --netuid {self.cfg.chain.netuid}` first")
            if first:
                raise NotRegisteredError(msg)
            log.error(msg)
        self.report_status()

    def status(self) -> dict:
        """This axon's hotkey (ss58), UID, stake, trust, incentive, emission (from the last metagraph),
        validators seen (permits), and answers since the last status line; what :meth:`report_status`
        logs and exports."""
        mg, uid = self.metagraph, self.uid
        permits = getattr(mg, "validator_permit", None) if mg is not None else None
        permits = [] if permits is None else list(permits)  # numpy/torch arrays on a real metagraph
        return {"hotkey": self.wallet.hotkey.ss58_address if self.wallet is not None else "",
                "uid": -1 if uid is None else uid,
                "stake": _at(getattr(mg, "S", None), uid), "trust": _at(getattr(mg, "T", None), uid),
                "incentive": _at(getattr(mg, "I", None), uid), "emission": _at(getattr(mg, "E", None), uid),
                "validators": sum(1 for p in permits if bool(p)), "answers": self._answers,
                "window_s": round(time.time() - self._window_start, 1)}

    def report_status(self) -> dict:
        """Log the status line, hand it to the hooks (Prometheus gauges), start a new answer window."""
        st = self.status()
        log.info("status: uid %s | stake %.4f | trust %.4f | incentive %.6f | emission %.6f | validators %d | "
                 "answers %d in the last %.0f s | hotkey %s", "-" if st["uid"] < 0 else st["uid"], st["stake"],
                 st["trust"], st["incentive"], st["emission"], st["validators"], st["answers"], st["window_s"],
                 _short(st["hotkey"]) + (f" ({self.name})" if self.name else ""))
        self.hooks.status(st)
        self._answers, self._window_start = 0, time.time()
        self._warn_degraded()
        return st

    def _check_degraded(self) -> None:
        """A tier with no loadable expert refuses the start (exit 7, the tiers named; each missing
        model was logged with its fix) unless ``--allow-degraded``; allowed, it is warned now and on
        every resync, and shows as ``natix_engine_degraded`` and in ``/readyz``."""
        from natix_miner.preflight import DegradedStart, check_degraded

        try:
            self.degraded = check_degraded(self.engine, self.cfg.allow_degraded)
        except DegradedStart as exc:
            raise StartupError(errors.MODELS, f"profile {self.profile.name} would serve degraded: {exc}; the log "
                                              f"names each missing model and its fix (`natix-miner profile validate "
                                              f"{self.profile.path or self.profile.name} --check-models` too), or pass --allow-degraded "
                                              f"/ NATIX_ALLOW_DEGRADED=1 to serve anyway") from None
        self._warn_degraded()

    def _warn_degraded(self) -> None:
        if self.degraded:
            log.warning("serving DEGRADED (--allow-degraded): %s", "; ".join(ln.strip() for ln in self.degraded))

    def _connect_chain(self) -> None:
        """Chain connection (the endpoint named on failure), then registration and UID."""
        if self.subtensor is None:
            self.subtensor = connect_chain(self.cfg)
        self.sync(first=True)
        log.info("hotkey %s is uid %s on netuid %d (%s)", self.wallet.hotkey.ss58_address, self.uid,
                 self.cfg.chain.netuid, chain_endpoint(self.cfg))

    def _serve_on_chain(self) -> None:
        """Announce the listening axon on the subnet; a refusal is a start-up error, not a log line."""
        try:
            result = self.subtensor.serve_axon(netuid=self.cfg.chain.netuid, axon=self.axon)
        except Exception as exc:
            raise StartupError(errors.SERVE, f"serve_axon on netuid {self.cfg.chain.netuid} failed "
                                             f"({type(exc).__name__}: {exc}); check the endpoint and that the "
                                             f"coldkey/hotkey can sign") from exc
        ok, message = _extrinsic_ok(result)
        if not ok:
            raise StartupError(errors.SERVE, f"serve_axon on netuid {self.cfg.chain.netuid} was refused: "
                                             f"{message or 'no reason given'}; check --axon.external_ip / "
                                             f"--axon.external_port (the address validators will call)")

    # -- lifecycle ---------------------------------------------------------------------------
    def build_axon(self):
        import bittensor as bt

        a = self.cfg.axon
        external_ip = a.external_ip or self._external_ip or ("127.0.0.1" if self.cfg.local else None)
        kwargs = dict(wallet=self.wallet, port=a.port or None, ip=a.ip, external_port=a.external_port,
                      max_workers=a.max_workers)
        if external_ip:
            kwargs["external_ip"] = external_ip
        if self.cfg.local and not a.port:
            kwargs["port"] = _free_port()
        axon = bt.Axon(**kwargs)
        from natix_miner.miner.limits import install_body_limit, tune_server

        from natix_miner.miner.limits import ConnectionGovernor, install_caller_context

        self.governor = ConnectionGovernor(a.max_connections, a.max_connections_per_peer,
                                           min(a.reserved_connections, a.max_connections // 4), a.max_requests_per_hotkey)
        self.replay = self._replay_guard()
        install_body_limit(axon.app, a.max_body_bytes)
        tune_server(axon, a.max_connections, header_timeout_s=a.header_timeout_s, body_timeout_s=a.body_timeout_s,
                    governor=self.governor)  # caps per peer and in all, validators keep room; keep-alive > aiohttp's
        # outermost: the signed caller of each request; paths that are no synapse get 404 at once
        install_caller_context(axon.app, self.governor, routes=axon.forward_class_types)
        self._attach(axon)
        return axon

    def _replay_guard(self):
        """The replay guard, its nonce file in ``axon.state_dir`` (not writable: a configuration
        error), else in ``natix-state/`` next to the wallet, else ``~/.natix-miner/state`` (a wallet
        mounted read-only is normal), else in memory only, with a warning."""
        from natix_miner.miner.errors import ConfigError
        from natix_miner.miner.nonces import ReplayGuard

        a = self.cfg.axon
        name = f"nonces-{self.wallet.hotkey.ss58_address}.log"
        if a.state_dir:
            try:
                return ReplayGuard(os.path.join(os.path.expanduser(a.state_dir), name), window_s=a.nonce_window_s)
            except OSError as exc:
                raise ConfigError(f"axon.state_dir {a.state_dir} is not a writable directory ({exc.strerror or exc}); "
                                  f"point --axon.state_dir / NATIX_AXON_STATE_DIR at one") from None
        wallet_path = getattr(self.wallet, "path", None)
        # a wallet read from Vault has no folder (its path is "<memory>"): never a folder under the cwd
        on_disk = isinstance(wallet_path, str) and os.path.isdir(os.path.expanduser(wallet_path))
        dirs = [os.path.join(os.path.expanduser(wallet_path), "natix-state")] if on_disk else []
        for d in dirs + [os.path.expanduser("~/.natix-miner/state")]:
            try:
                return ReplayGuard(os.path.join(d, name), window_s=a.nonce_window_s)
            except OSError as exc:
                log.warning("replay guard: cannot use %s (%s)", d, exc.strerror or exc)
        log.warning("replay guard: no writable state directory; nonces kept in memory only (a restart reopens "
                    "the %.0f s window); set --axon.state_dir / NATIX_AXON_STATE_DIR", a.nonce_window_s)
        return ReplayGuard(None, window_s=a.nonce_window_s)

    def _bind_axon(self) -> None:
        """Bind the axon's socket now (fails at once, naming the port, when another process holds it);
        uvicorn listens on this very socket when the axon starts, so nobody can take the port between."""
        import functools
        import socket

        host, port = self.cfg.axon.ip, int(self.axon.port)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; a listener still refuses
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise PortInUse("axon", host, port, "--axon.port", "NATIX_AXON_PORT", exc.strerror or str(exc)) from None
        self._axon_socket = sock
        server = self.axon.fast_server
        server.run = functools.partial(type(server).run, server, sockets=[sock])

    def _load_wallet(self):
        from natix_miner.miner.wallet import load_wallet
        from natix_miner.ops.startup_checks import enforce_permissions

        if self.wallet is None:
            try:
                self.wallet = load_wallet(self.cfg)
            except StartupError:
                raise
            except Exception as exc:  # noqa: BLE001 - missing files, Vault down/sealed/denied: one line
                raise StartupError(errors.WALLET, f"{exc}") from exc
        # refuses key/config files open to others; `natix-miner run` maps InsecurePermissions to exit code 6
        enforce_permissions(self.cfg, self.wallet, self.profile)

    def _load_local_metagraph(self) -> None:
        """Local mode's metagraph from ``--local.metagraph`` (a bad file is a configuration error)."""
        import types

        from natix_miner.miner.gate import load_metagraph_file

        try:
            hotkeys, stakes, permits = load_metagraph_file(self.cfg.local_metagraph)
        except (OSError, ValueError) as exc:
            raise StartupError(errors.CONFIG, f"--local.metagraph / NATIX_LOCAL_METAGRAPH: {exc}") from exc
        self.gate.update(hotkeys, stakes, permits)
        self.metagraph = types.SimpleNamespace(hotkeys=hotkeys, S=stakes, validator_permit=permits)
        self.uid = find_uid(self.metagraph, self.wallet.hotkey.ss58_address)
        log.info("local metagraph: %d hotkeys from %s", self.gate.known, self.cfg.local_metagraph)

    async def start(self) -> None:
        """configuration (done) -> wallet -> chain -> registration and UID -> axon port bound -> models
        -> listen -> serve_axon. Each failure is a :class:`StartupError` with its exit code. The three
        phases are separate so that ``natix_miner.miner.hotkeys.MinerGroup`` can prepare N miners, load
        one shared engine, then put every axon live."""
        await self.prepare()
        await self.load_engine()
        await self.go_live()

    async def prepare(self) -> None:
        """Wallet -> chain -> registration and UID -> public IP -> axon built and its port bound."""
        from natix_miner.ops.secrets import disable_core_dumps

        disable_core_dumps()  # before any key is read: a crash must not write the hotkey to a core file
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._load_wallet()
        if self.cfg.local and self.cfg.local_metagraph:
            self._load_local_metagraph()
        if not self.cfg.local:
            await self.loop.run_in_executor(None, self._connect_chain)
        if not self.cfg.local and not self.cfg.axon.external_ip and not self._external_ip:
            self._external_ip = await self.loop.run_in_executor(None, _public_ip)
        self.axon = self.build_axon()
        self._bind_axon()  # before minutes of model loading: a taken port fails now

    async def load_engine(self) -> None:
        """Build and start the engine unless it is already ``ready`` (a shared one), then the degraded check."""
        try:
            if self.engine is None:
                self.engine = self.engine_factory(self.profile)
            if not self.engine.ready:
                await self.engine.start()
        except StartupError:
            raise
        except EngineUnavailable as exc:  # a remote engine (--engine.ray) not reachable: its message names the fix
            raise StartupError(errors.MODELS, str(exc)) from exc
        except Exception as exc:
            raise StartupError(errors.MODELS, f"loading profile {self.profile.name} failed ({type(exc).__name__}: "
                                              f"{exc}); `natix-miner profile validate {self.profile.name}` and "
                                              f"`natix-miner experts list` show what is missing") from exc
        self._check_degraded()

    async def go_live(self) -> None:
        """Listen on the bound socket, announce the axon on chain (``serve_axon``), first status line."""
        await self._listen()
        if not self.cfg.local:
            await self.loop.run_in_executor(None, self._serve_on_chain)
        self.serving = True
        host, port = self._axon_socket.getsockname()[:2]
        log.info("miner %s serving on %s:%d (%s mode, profile %s%s)", self.wallet.hotkey.ss58_address, host, port,
                 "local" if self.cfg.local else f"chain, uid {self.uid}", self.profile.name,
                 ", DEMO MODEL" if self.profile.demo else "")
        self.hooks.started(self)
        self.report_status()

    async def _listen(self, timeout_s: float = 30.0) -> None:
        """Start uvicorn on the bound socket and wait until it accepts connections."""
        self.axon.start()
        deadline = time.monotonic() + timeout_s
        while not getattr(self.axon.fast_server, "started", True):
            if time.monotonic() > deadline:
                raise StartupError(errors.PORT, f"the axon did not start listening on port {self.axon.port} "
                                                f"within {timeout_s:.0f} s")
            await asyncio.sleep(0.01)

    def listening(self) -> bool:
        """True while the axon's own socket is open and uvicorn is accepting on it (``/readyz``)."""
        sock, server = self._axon_socket, getattr(self.axon, "fast_server", None)
        if sock is None or server is None or sock.fileno() < 0:
            return False
        return bool(getattr(server, "started", False)) and not getattr(server, "should_exit", False)

    @property
    def port(self) -> int:
        return self.axon.port if self.axon else 0

    async def stop(self) -> None:
        self.close_axon()
        if self.engine is not None:
            await self.engine.close()
        self.hooks.stopped()

    def close_axon(self) -> None:
        """Stop serving this hotkey: the axon, its socket and its nonce file (not the engine, which a
        ``MinerGroup`` shares)."""
        self.serving = False
        if self.axon is not None:
            try:
                self.axon.stop()
            except Exception:  # pragma: no cover
                pass
        server = getattr(self.axon, "fast_server", None)
        if self._axon_socket is not None and not getattr(server, "started", False):
            self._axon_socket.close()  # never handed to uvicorn (which closes it itself on shutdown)
        if self.replay is not None:
            self.replay.close()

    def request_stop(self) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)

    async def run(self, ready: typing.Optional[threading.Event] = None) -> None:
        """Start, then sync the metagraph every ``sync_interval_s`` until SIGINT/SIGTERM."""
        await run_until_stopped(self, self._tick, min(60.0, self.cfg.sync_interval_s), ready)

    async def _tick(self) -> None:
        if time.time() - self._last_sync < self.cfg.sync_interval_s:
            return
        if self.cfg.local:
            self._last_sync = time.time()
            self.report_status()
            return
        try:
            await self.loop.run_in_executor(None, self.sync)
        except Exception as exc:  # keep serving on a stale metagraph
            log.warning("metagraph sync failed: %s", exc)


async def run_until_stopped(runner, tick: typing.Callable[[], typing.Awaitable[None]], every_s: float,
                            ready: typing.Optional[threading.Event] = None) -> None:
    """``runner.start()`` (on failure ``runner.stop()`` closes what was opened, then the error surfaces),
    SIGINT/SIGTERM set ``runner._stop``, ``ready`` is set, then ``await tick()`` every ``every_s`` until
    stopped; ``runner.stop()`` at the end. A :class:`Miner` and a ``MinerGroup`` run so."""
    try:
        await runner.start()
    except BaseException:
        await runner.stop()  # close what was opened (socket, engine, ops server) before the error surfaces
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            runner.loop.add_signal_handler(sig, runner._stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    if ready is not None:
        ready.set()
    try:
        while not runner._stop.is_set():
            try:
                await asyncio.wait_for(runner._stop.wait(), timeout=every_s)
            except asyncio.TimeoutError:
                pass
            if not runner._stop.is_set():
                await tick()
    finally:
        await runner.stop()


def _public_ip() -> str:
    """This host's public IP, as bittensor's axon would look it up; a :class:`StartupError` (exit 9) naming
    ``--axon.external_ip`` when no lookup service answers."""
    from bittensor.utils import networking

    try:
        return networking.get_external_ip()
    except Exception as exc:  # noqa: BLE001 - ExternalIPNotFound, timeouts, DNS: all "unknown"
        raise StartupError(errors.SERVE, f"could not determine this host's public IP ({type(exc).__name__}: "
                                         f"{exc}); set --axon.external_ip / NATIX_AXON_EXTERNAL_IP") from None


def _extrinsic_ok(result) -> typing.Tuple[bool, str]:
    """``serve_axon``'s answer: bittensor 10's ``ExtrinsicResponse`` (``.success``, ``.message``), a
    ``(success, message)`` pair, or a bool (older releases and test chains)."""
    if hasattr(result, "success"):
        return bool(result.success), str(getattr(result, "message", "") or "")
    if isinstance(result, tuple) and result:
        return bool(result[0]), str(result[1]) if len(result) > 1 else ""
    if result is None:
        return True, ""  # releases that return nothing raise on failure
    return bool(result), ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
