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
