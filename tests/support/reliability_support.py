"""Shared pieces of the reliability tests: validator wallets with stakes, a real miner config in
local mode, hooks that record every outcome, and a loopback query helper.

Usage::

    from tests.support.reliability_support import RecordingHooks, miner_config, query, validators
    vals = validators(tmp_path, [1000, 10])               # [(wallet, stake), ...]
    cfg = miner_config(tmp_path, vals, axon={"max_inflight": 2})
"""

import math
import threading
import time
import typing

from natix_miner.config import MinerConfig
from natix_miner.miner.hooks import MinerHooks
from natix_miner.miner.local import loopback_dendrite
from natix_miner.miner.wallet import ephemeral_wallet


def validators(tmp_path, stakes: typing.Sequence[float], prefix: str = "val"):
    return [(ephemeral_wallet(f"{prefix}{i}", "hk", str(tmp_path / f"{prefix}{i}")), float(s))
            for i, s in enumerate(stakes)]


def miner_config(tmp_path, vals, **extra) -> MinerConfig:
    """Local mode, the given validators (with permits) as the metagraph, axon on a free port."""
    lines = [f"- {{hotkey: {w.hotkey.ss58_address}, stake: {s}, validator_permit: true}}" for w, s in vals]
    mg = tmp_path / "metagraph.yaml"
    mg.write_text("\n".join(lines) + "\n")
    axon = {"ip": "127.0.0.1", "port": 0, **extra.pop("axon", {})}
    return MinerConfig.model_validate({"local": True, "local_metagraph": str(mg), "axon": axon,
                                       "metrics": {"enabled": False}, **extra})


class RecordingHooks(MinerHooks):
    """Every request's outcome, per caller hotkey (a real hooks implementation, thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: typing.List[dict] = []
        self.refused: typing.List[dict] = []

    def request(self, route, outcome, seconds, result=None, hotkey=None):
        with self.lock:
            self.requests.append({"route": route, "outcome": outcome, "seconds": seconds, "hotkey": hotkey,
                                  "fallback_reason": getattr(result, "fallback_reason", None),
                                  "evidence": sorted(getattr(result, "evidence", None) or {}),
                                  "skipped": dict(getattr(result, "skipped", None) or {})})

    def blacklisted(self, route, reason, hotkey=None):
        with self.lock:
            self.refused.append({"route": route, "reason": reason, "hotkey": hotkey})

    def outcomes(self) -> typing.Dict[str, str]:
        with self.lock:
            return {r["hotkey"]: r["outcome"] for r in self.requests}


async def query(wallet, info, synapse, timeout: float = 9.0):
    """One real dendrite call on loopback; returns (response synapse, seconds)."""
    d = loopback_dendrite(wallet)
    t0 = time.monotonic()
    try:
        r = await d.forward(info, synapse, timeout=timeout, deserialize=False)
    finally:
        await d.aclose_session()
    return r, time.monotonic() - t0


def valid(p) -> bool:
    return isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0 and p != 0.5
