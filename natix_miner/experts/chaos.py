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

from natix_miner.config import ExpertSpec
from natix_miner.experts.base import Evidence, Expert

MODES = ("ok", "raise", "oom", "hang", "slow", "nan", "short")


class ChaosExpert(Expert):
    family = "chaos"

    def load(self, device: str) -> None:
        from natix_miner.experts import create_expert

        inner = dict(self.options.get("inner") or {})
        if "family" not in inner:
            raise ValueError(f"chaos expert {self.name}: options.inner.family is required")
        inner.setdefault("name", f"{self.name}.inner")
        self.inner = create_expert(ExpertSpec.model_validate(inner), self.profile)
        self.inner.load(device)
        self.device = device
        self.mode_file = self.options.get("mode_file")
        self.static_mode = str(self.options.get("mode", "ok"))
        self.rate = float(self.options.get("rate", 1.0))
        self.slow_s = float(self.options.get("slow_s", 0.5))
        self.hang_max_s = float(self.options.get("hang_max_s", 60.0))
        self._rng = random.Random(int(self.options.get("seed", 0)))
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
