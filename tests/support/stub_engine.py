"""A test double of :class:`natix_miner.engine.client.EngineClient` that imports nothing heavy.

It answers from the image's bytes (no model): ``P = 0.05 + 0.9 * (sum(bytes) % 1000) / 1000``, so two
images get different answers and a test can compute the expected one with :func:`expected_probability`.

Usage::

    from tests.support.stub_engine import StubEngine, expected_probability
    engine = StubEngine()
    miner = Miner(cfg, engine=engine)          # or Miner(cfg, engine_factory=StubEngine)
    ... engine.calls                           # (decoded image bytes, deadline) of every predict
"""

import base64
import binascii
import time
import typing

from natix_miner.config import ExpertSpec, Profile, TierSpec
from natix_miner.engine.result import PredictResult


def stub_profile() -> Profile:
    """A one-tier profile naming one expert of a family nothing loads (the stub never loads it)."""
    return Profile(name="stub", experts=[ExpertSpec(name="stub", family="stub")],
                   tiers=[TierSpec(name="fast", experts=["stub"])])


def _bytes(image: typing.Union[bytes, str]) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        return b""


def expected_probability(image: typing.Union[bytes, str]) -> float:
    data = _bytes(image)
    return 0.05 + 0.9 * (sum(data) % 1000) / 1000 if data else 0.49


class StubEngine:
    """Implements the EngineClient protocol by duck typing (no base class), as another client would."""

    def __init__(self, profile: typing.Optional[Profile] = None):
        self.profile = profile or stub_profile()
        self.ready = False
        self.closed = False
        self.calls: typing.List[typing.Tuple[bytes, typing.Optional[float]]] = []

    async def start(self) -> None:
        self.ready = True

    async def predict(self, image: typing.Union[bytes, str], deadline: typing.Optional[float] = None,
                      all_tiers: bool = False) -> PredictResult:
        data = _bytes(image)
        self.calls.append((data, deadline))
        if not data:
            return PredictResult(probability=self.profile.fallback_probability, fallback=True,
                                 fallback_reason="bad_image")
        left = None if deadline is None else deadline - time.monotonic()
        return PredictResult(probability=expected_probability(data), tiers_run=["fast"],
                             timings={"left_s": left or 0.0})

    def status(self) -> dict:
        return {"ready": self.ready, "profile": self.profile.name,
                "experts": {"stub": {"load": "loaded" if self.ready else "pending", "breaker": "closed"}}}

    def degraded_report(self) -> typing.List[str]:
        return []

    async def close(self) -> None:
        self.ready, self.closed = False, True
