"""Loopback helpers for local mode, the mock validator and tests.

bittensor's Dendrite looks up the public IP when it is created (several HTTP services); on a
closed network that fails. ``loopback_dendrite`` creates one with the lookup answered locally.

Usage::

    d = loopback_dendrite(validator_wallet)
    info = axon_info("127.0.0.1", port, miner_hotkey_ss58)
    syn = await d.forward(info, ImageSynapse(image=b64), timeout=9)
"""

import contextlib
import typing


@contextlib.contextmanager
def _no_ip_lookup(ip: str = "127.0.0.1"):
    from bittensor.utils import networking

    orig = networking.get_external_ip
    networking.get_external_ip = lambda: ip
    try:
        yield
    finally:
        networking.get_external_ip = orig


def loopback_dendrite(wallet, ip: str = "127.0.0.1"):
    import bittensor as bt

    with _no_ip_lookup(ip):
        return bt.Dendrite(wallet=wallet)


def axon_info(ip: str, port: int, hotkey: str, coldkey: typing.Optional[str] = None):
    import bittensor as bt

    return bt.AxonInfo(version=1, ip=ip, port=int(port), ip_type=4, hotkey=hotkey, coldkey=coldkey or hotkey)


class MinerThread:
    """Run a :class:`Miner` on its own thread and event loop (tests, notebooks, the mock validator).

    Usage::

        with MinerThread(cfg, engine=engine) as m:
            port, hotkey = m.port, m.hotkey
        with MinerThread(cfg, runner=MinerGroup(cfg, engine=engine)) as m:   # many hotkeys
            m.miner.miners                                                  # name -> Miner
    """

    def __init__(self, cfg, engine=None, hooks=None, wallet=None, start_timeout: float = 300.0, subtensor=None,
                 runner=None, engine_factory=None):
        """``runner``: anything with ``run(ready=)`` and ``request_stop()`` (a ``MinerGroup``) instead of a
        :class:`Miner` built from the other arguments; ``engine_factory``: as :class:`Miner`'s (builds the
        engine from the parsed profile at start)."""
        from natix_miner.miner.neuron import Miner

        self.miner = runner or Miner(cfg, engine=engine, hooks=hooks, wallet=wallet, subtensor=subtensor,
                                     engine_factory=engine_factory)
        self.start_timeout = start_timeout
        self._thread = None
        self._error = None

    def __enter__(self):
        import asyncio
        import threading

        ready = threading.Event()

        def _run():
            try:
                asyncio.run(self.miner.run(ready=ready))
            except BaseException as exc:  # surfaced to the caller below
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=_run, name="miner", daemon=True)
        self._thread.start()
        if not ready.wait(self.start_timeout):
            raise TimeoutError("miner did not start in time")
        if self._error is not None:
            raise RuntimeError(f"miner failed to start: {self._error!r}") from self._error
        return self

    @property
    def port(self) -> int:
        return self.miner.port

    @property
    def hotkey(self) -> str:
        return self.miner.wallet.hotkey.ss58_address

    def info(self):
        w = self.miner.wallet
        return axon_info("127.0.0.1", self.port, w.hotkey.ss58_address, w.coldkeypub.ss58_address)

    def __exit__(self, *exc):
        self.miner.request_stop()
        self._thread.join(30)
        return False
