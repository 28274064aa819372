"""The miner neuron: axon wiring, blacklist, priority, metagraph sync, local mode.

The miner layer never imports torch: it hands base64 text to the engine's ``predict`` and writes
back a probability that is always finite and in [0, 1]. The engine runs on the main event loop;
the axon (uvicorn) runs on its own thread and loop, and hands work over with
``run_coroutine_threadsafe``.

Usage::

    cfg = MinerConfig.from_args(["--local", "--axon.port", "8091"])
    asyncio.run(Miner(cfg).run())
"""

import asyncio
import logging
import os
import signal
import threading
import time
import typing

from natix_miner.config import MinerConfig, load_profile
from natix_miner.engine.result import safe_probability
from natix_miner.miner.admission import Admission, Overloaded
from natix_miner.miner.gate import Gate
from natix_miner.miner.hooks import MinerHooks
from natix_miner.miner.limits import CALLER, signed_hotkey
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse

log = logging.getLogger("natix_miner.miner")

TRANSPORT_MARGIN_S = 1.0  # leave this much of the validator's timeout for the network
DEFAULT_TIMEOUT_S = 9.0


class NotRegisteredError(RuntimeError):
    """The hotkey is not registered on the subnet: nothing to serve."""


class Miner:
    def __init__(self, cfg: MinerConfig, engine=None, hooks: typing.Optional[MinerHooks] = None, wallet=None,
                 subtensor=None):
        """``subtensor``: a chain client to use instead of ``bt.Subtensor(network)`` (anything with
        ``metagraph(netuid)`` and ``serve_axon(netuid=, axon=)``; tests pass a local chain)."""
        self.cfg = cfg
        self.profile = engine.profile if engine is not None else load_profile(cfg.profile)
        self.engine = engine
        self.hooks = hooks or MinerHooks()
        self.wallet = wallet
        self.gate = Gate(cfg.blacklist, local=cfg.local)
        self.admission = Admission(cfg.axon.max_inflight, cfg.axon.max_waiting)  # runs on self.loop
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
        self.hooks.request(route, outcome, time.perf_counter() - t0, result=result, hotkey=hotkey)
        return synapse

    # bittensor's attach() inspects these signatures: parameter named `synapse`, real annotations.
    def _attach(self, axon) -> None:
        miner = self

        async def forward_image(synapse: ImageSynapse) -> ImageSynapse:
            return await miner._answer(synapse, "ImageSynapse")

        async def blacklist_image(synapse: ImageSynapse) -> typing.Tuple[bool, str]:
            return miner._blacklist(synapse, "ImageSynapse")

        async def priority_image(synapse: ImageSynapse) -> float:
            return miner.gate.priority(getattr(synapse.dendrite, "hotkey", None))

        async def forward_extended(synapse: ExtendedImageSynapse) -> ExtendedImageSynapse:
            return await miner._answer(synapse, "ExtendedImageSynapse")

        async def blacklist_extended(synapse: ExtendedImageSynapse) -> typing.Tuple[bool, str]:
            return miner._blacklist(synapse, "ExtendedImageSynapse")

        async def priority_extended(synapse: ExtendedImageSynapse) -> float:
            return miner.gate.priority(getattr(synapse.dendrite, "hotkey", None))

        axon.attach(forward_fn=forward_image, blacklist_fn=blacklist_image, priority_fn=priority_image)
        axon.attach(forward_fn=forward_extended, blacklist_fn=blacklist_extended, priority_fn=priority_extended)
        self._guard_routes(axon)

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
            if axon.blacklist_fns.get(name) is None:
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
        """Refresh the metagraph (stakes, permits) for the gate. No-op in local mode."""
        if self.cfg.local or self.subtensor is None:
            return
        mg = self.subtensor.metagraph(self.cfg.chain.netuid)
        stakes = [float(s) for s in mg.S]
        self.gate.update(list(mg.hotkeys), stakes, [bool(p) for p in mg.validator_permit])
        self.metagraph = mg
        self._last_sync = time.time()
        if self.wallet.hotkey.ss58_address not in mg.hotkeys:
            msg = (f"hotkey {self.wallet.hotkey.ss58_address} is not registered on netuid "
                   f"{self.cfg.chain.netuid} ({self.cfg.chain.network}); register it with "
                   f"`btcli subnet register --netuid {self.cfg.chain.netuid}` first")
            if first:
                raise NotRegisteredError(msg)
            log.error(msg)

    def _connect_chain(self) -> None:
        import bittensor as bt

        if self.subtensor is None:
            net = self.cfg.chain.chain_endpoint or self.cfg.chain.network
            self.subtensor = bt.Subtensor(network=net)
        self.sync(first=True)
        self.subtensor.serve_axon(netuid=self.cfg.chain.netuid, axon=self.axon)

    # -- lifecycle ---------------------------------------------------------------------------
    def build_axon(self):
        import bittensor as bt

        a = self.cfg.axon
        external_ip = a.external_ip or ("127.0.0.1" if self.cfg.local else None)
        kwargs = dict(wallet=self.wallet, port=a.port or None, ip=a.ip, external_port=a.external_port,
                      max_workers=a.max_workers)
        if external_ip:
            kwargs["external_ip"] = external_ip
        if self.cfg.local and not a.port:
            kwargs["port"] = _free_port()
        axon = bt.Axon(**kwargs)
        from natix_miner.miner.limits import install_body_limit, tune_server

        from natix_miner.miner.limits import ConnectionGovernor, install_caller_context
        from natix_miner.miner.nonces import ReplayGuard

        self.governor = ConnectionGovernor(a.max_connections, a.max_connections_per_peer,
                                           min(a.reserved_connections, a.max_connections // 4), a.max_requests_per_hotkey)
        self.replay = ReplayGuard(os.path.join(self._state_dir(), f"nonces-{self.wallet.hotkey.ss58_address}.log"),
                                  window_s=a.nonce_window_s)
        install_body_limit(axon.app, a.max_body_bytes)
        tune_server(axon, a.max_connections, header_timeout_s=a.header_timeout_s, body_timeout_s=a.body_timeout_s,
                    governor=self.governor)  # caps per peer and in all, validators keep room; keep-alive > aiohttp's
        install_caller_context(axon.app, self.governor)  # outermost: the signed caller of each request
        self._attach(axon)
        return axon

    def _state_dir(self) -> str:
        """``axon.state_dir``, else ``natix-state/`` next to the wallet, else ``~/.natix-miner/state``."""
        if self.cfg.axon.state_dir:
            return os.path.expanduser(self.cfg.axon.state_dir)
        wallet_path = getattr(self.wallet, "path", None)
        if isinstance(wallet_path, str) and wallet_path:
            return os.path.join(os.path.expanduser(wallet_path), "natix-state")
        return os.path.expanduser("~/.natix-miner/state")

    async def start(self) -> None:
        from natix_miner.miner.wallet import load_wallet
        from natix_miner.ops.secrets import disable_core_dumps

        disable_core_dumps()  # before any key is read: a crash must not write the hotkey to a core file
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.wallet is None:
            self.wallet = load_wallet(self.cfg)
        from natix_miner.ops.startup_checks import enforce_permissions

        enforce_permissions(self.cfg, self.wallet, self.profile)  # refuses key/config files open to others
        if self.engine is None:
            from natix_miner.engine import Engine

            self.engine = Engine(self.profile)
        if not self.engine.ready:
            await self.engine.start()
        if self.cfg.local and self.cfg.local_metagraph:
            from natix_miner.miner.gate import load_metagraph_file

            self.gate.update(*load_metagraph_file(self.cfg.local_metagraph))
            log.info("local metagraph: %d hotkeys from %s", self.gate.known, self.cfg.local_metagraph)
        self.axon = self.build_axon()
        if not self.cfg.local:
            await self.loop.run_in_executor(None, self._connect_chain)
        self.axon.start()
        for _ in range(1000):  # axon.start() returns before uvicorn listens: early callers got refused
            if getattr(self.axon.fast_server, "started", True):
                break
            await asyncio.sleep(0.01)
        self.serving = True
        log.info("miner %s serving on %s:%d (%s mode, profile %s)", self.wallet.hotkey.ss58_address,
                 self.cfg.axon.ip, self.axon.port, "local" if self.cfg.local else "chain", self.profile.name)
        self.hooks.started(self)

    @property
    def port(self) -> int:
        return self.axon.port if self.axon else 0

    async def stop(self) -> None:
        self.serving = False
        if self.axon is not None:
            try:
                self.axon.stop()
            except Exception:  # pragma: no cover
                pass
        if self.engine is not None:
            await self.engine.close()
        if self.replay is not None:
            self.replay.close()
        self.hooks.stopped()

    def request_stop(self) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)

    async def run(self, ready: typing.Optional[threading.Event] = None) -> None:
        """Start, then sync the metagraph every ``sync_interval_s`` until SIGINT/SIGTERM."""
        await self.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._stop.set)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        if ready is not None:
            ready.set()
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=min(60.0, self.cfg.sync_interval_s))
                except asyncio.TimeoutError:
                    pass
                if not self.cfg.local and time.time() - self._last_sync >= self.cfg.sync_interval_s:
                    try:
                        await self.loop.run_in_executor(None, self.sync)
                    except Exception as exc:  # keep serving on a stale metagraph
                        log.warning("metagraph sync failed: %s", exc)
        finally:
            await self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
