"""The on-chain path (``local: false``) against a local chain: start-up refuses an unregistered
hotkey, the axon is served on the subnet, the metagraph decides who is admitted, periodic resyncs
change that, and a failing resync keeps the miner serving on the last metagraph.

No subtensor node can run here, and bittensor 10.5's own ``MockSubtensor`` cannot build a metagraph
(``NeuronInfo`` has no ``rank``; ``get_metagraph_info`` returns MagicMocks), so the chain is a small
in-memory ledger with the two calls the miner makes. Axon, dendrites, wallets, the engine and the
miner are the real ones.
"""

import threading
import time
import types

import pytest

from natix_miner.config import MinerConfig
from natix_miner.miner.local import MinerThread
from natix_miner.miner.neuron import _free_port
from natix_miner.protocol import ImageSynapse
from tests.support.reliability_support import query, valid, validators


class LocalChain:
    """Registered hotkeys with stake and permits; records ``serve_axon`` calls; can fail syncs."""

    def __init__(self, netuid: int = 72):
        self.netuid = netuid
        self.neurons: dict = {}  # hotkey -> (stake, permit)
        self.served: list = []
        self.syncs = 0
        self.fail_syncs = False
        self.lock = threading.Lock()

    def register(self, hotkey: str, stake: float = 0.0, permit: bool = False) -> None:
        with self.lock:
            self.neurons[hotkey] = (float(stake), bool(permit))

    def metagraph(self, netuid: int):
        assert netuid == self.netuid, netuid
        with self.lock:
            self.syncs += 1
            if self.fail_syncs:
                raise ConnectionError("chain endpoint unreachable")
            keys = list(self.neurons)
            return types.SimpleNamespace(hotkeys=keys, S=[self.neurons[k][0] for k in keys],
                                         validator_permit=[self.neurons[k][1] for k in keys])

    def serve_axon(self, netuid: int, axon):
        self.served.append((netuid, axon.external_ip, axon.external_port, axon.wallet.hotkey.ss58_address))
        return True


def _cfg(sync_interval_s: float = 0.2) -> MinerConfig:
    return MinerConfig.model_validate({
        "local": False, "sync_interval_s": sync_interval_s, "chain": {"netuid": 72},
        "axon": {"ip": "127.0.0.1", "port": _free_port(), "external_ip": "127.0.0.1"},
        "blacklist": {"min_stake": 100.0}, "metrics": {"enabled": False}})


def _wait(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_unregistered_hotkey_refuses_to_start(miner_wallet):
    chain = LocalChain()
    with pytest.raises(RuntimeError, match="not registered on netuid 72.*btcli subnet register"):
        with MinerThread(_cfg(), wallet=miner_wallet, subtensor=chain):
            pass
    assert chain.served == []  # never announced an axon for a hotkey that is not on the subnet


async def test_metagraph_decides_admission_and_resyncs_change_it(tmp_path, miner_wallet, jpeg_b64):
    (big, _), (small, _), (stranger, _) = validators(tmp_path, [5000, 50, 0])
    chain = LocalChain()
    chain.register(miner_wallet.hotkey.ss58_address)
    chain.register(big.hotkey.ss58_address, stake=5000, permit=True)
    chain.register(small.hotkey.ss58_address, stake=50, permit=True)  # below min_stake 100
    with MinerThread(_cfg(), wallet=miner_wallet, subtensor=chain) as m:
        assert chain.served == [(72, "127.0.0.1", m.port, miner_wallet.hotkey.ss58_address)]
        info = m.info()
        r, _ = await query(big, info, ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 200 and valid(r.prediction)
        for w in (small, stranger):  # stake too low; not registered at all
            r, _ = await query(w, info, ImageSynapse(image=jpeg_b64))
            assert r.axon.status_code == 403 and r.prediction == -1.0, r.axon.status_message

        # the chain moves on: the big validator loses its permit, the small one stakes up
        chain.register(big.hotkey.ss58_address, stake=5000, permit=False)
        chain.register(small.hotkey.ss58_address, stake=800, permit=True)
        seen = chain.syncs
        _wait(lambda: chain.syncs >= seen + 2)
        r, _ = await query(big, info, ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 403
        r, _ = await query(small, info, ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 200 and valid(r.prediction)

        # the chain endpoint goes away: resyncs fail, the miner keeps serving on what it knew
        chain.fail_syncs = True
        seen = chain.syncs
        _wait(lambda: chain.syncs >= seen + 2)
        r, _ = await query(small, info, ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 200 and valid(r.prediction)
        assert m.miner.serving
        chain.fail_syncs = False
        # deregistered while running: logged, not fatal (the next registration may come back)
        with chain.lock:
            del chain.neurons[miner_wallet.hotkey.ss58_address]
        seen = chain.syncs
        _wait(lambda: chain.syncs >= seen + 2)
        r, _ = await query(small, info, ImageSynapse(image=jpeg_b64))
        assert r.axon.status_code == 200
    assert len(chain.served) == 1
