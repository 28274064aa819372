"""Fault injection around a real expert: raise, hang, CUDA out-of-memory, NaN, slow.

For chaos tests and staging soaks: the wrapped (``inner``) expert answers normally until a fault
is switched on. The fault comes from ``options.mode`` or, when ``options.mode_file`` is set, from
that file's first word, read on every batch, so an operator (or a test) can flip a running miner::

    echo hang > /tmp/chaos-vlm      # every batch now blocks until the file says something else
    echo ok   > /tmp/chaos-vlm      # back to normal

Modes: ``ok`` | ``raise`` (RuntimeError) | ``oom`` (``torch.cuda.OutOfMemoryError``) | ``hang``
(block until the mode changes, at most ``hang_max_s``) | ``slow`` (sleep ``slow_s`` then answer) |
``nan`` (every probability NaN) | ``short`` (one result fewer than images). ``rate`` (0..1) applies
the fault to that fraction of batches (seeded by ``seed``); the rest answer normally.

Profile entry::

    - name: flaky
      family: chaos
      options:
        mode_file: /tmp/chaos-flaky
        inner: {family: timm, model: test_efficientnet, options: {num_classes: 2}}
"""

import random
import threading
import time
import typing

import pydantic

from natix_miner.config import ExpertSpec
from natix_miner.experts.base import Evidence, Expert, WrapperOptions

Mode = typing.Literal["ok", "raise", "oom", "hang", "slow", "nan", "short"]
MODES: typing.Tuple[str, ...] = typing.get_args(Mode)


class Options(WrapperOptions):
    """Options of the ``chaos`` family (``natix-miner experts options chaos``)."""

    mode: Mode = "ok"
    """The fault when there is no ``mode_file``."""
    mode_file: typing.Optional[str] = None
    """A file whose first word is the mode, read on every batch (missing or unknown: ok)."""
    rate: float = pydantic.Field(default=1.0, ge=0, le=1)
    """Fraction of batches the fault applies to (seeded by ``seed``)."""
    slow_s: float = pydantic.Field(default=0.5, ge=0)
    """mode slow: sleep this long, then answer."""
    hang_max_s: float = pydantic.Field(default=60.0, ge=0)
    """mode hang: block until the mode changes, at most this long."""
    seed: int = 0
    """Seed of the ``rate`` draw."""


class ChaosExpert(Expert):
    family = "chaos"
    Options = Options

    def load(self, device: str) -> None:
        from natix_miner.experts import create_expert

        o = self.opts
        inner = dict(o.inner)
        inner.setdefault("name", f"{self.name}.inner")
        self.inner = create_expert(ExpertSpec.model_validate(inner), self.profile)
        self.inner.load(device)
        self.device = device
        self.mode_file = o.mode_file
        self.static_mode = o.mode
        self.rate = o.rate
        self.slow_s = o.slow_s
        self.hang_max_s = o.hang_max_s
        self._rng = random.Random(o.seed)
        self._lock = threading.Lock()
        self.injected: typing.Dict[str, int] = {m: 0 for m in MODES}

    def warmup(self) -> None:
        self.inner.warmup()

    def close(self) -> None:
        self.inner.close()

    def memory_bytes(self) -> int:
        return self.inner.memory_bytes()

    @property
    def mode(self) -> str:
        if self.mode_file:
            try:
                with open(self.mode_file) as fh:
                    words = fh.read(64).split()
                mode = words[0] if words else "ok"
            except OSError:
                mode = "ok"
        else:
            mode = self.static_mode
        return mode if mode in MODES else "ok"

    def predict_batch(self, images) -> typing.List[Evidence]:
        mode = self.mode
        if mode != "ok" and self.rate < 1.0:
            with self._lock:
                if self._rng.random() >= self.rate:
                    mode = "ok"
        self.injected[mode] += 1
        if mode == "raise":
            raise RuntimeError(f"chaos: injected failure in {self.name}")
        if mode == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 20.00 GiB (chaos: injected in {self.name})")
        if mode == "hang":
            end = time.monotonic() + self.hang_max_s
            while self.mode == "hang" and time.monotonic() < end:
                time.sleep(0.02)
        if mode == "slow":
            time.sleep(self.slow_s)
        out = self.inner.predict_batch(images)
        if mode == "nan":
            return [Evidence(float("nan")) for _ in images]
        if mode == "short":
            return list(out)[:-1]
        return out
