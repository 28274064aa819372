"""Small real experts and profile builders for the engine tests (real Expert subclasses, no mocks).

Each expert computes its answer from the image (the mean brightness, so a uniform grey image of
value v gives P = v / 255) and adds one behaviour the engine must cope with: slowness, errors,
hangs, recovery, a barrier that proves two replicas ran at once. Families are registered under
``engine_test_*`` names so the engine builds them through its normal factory.

Usage::

    from tests.support.engine_experts import grey_png, make_profile, register
    register()
    profile = make_profile(tmp_path, experts=[...], tiers=[...])
"""

import io
import threading
import time
import typing

import numpy as np
import yaml
from PIL import Image

from natix_miner.config import load_profile
from natix_miner.experts import register_family
from natix_miner.experts.base import Evidence, Expert

MODULE = "tests.support.engine_experts"


def grey_png(value: int, size: int = 224) -> bytes:
    """A uniform grey PNG (lossless: the brightness is exactly ``value``)."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def noise_jpeg(seed: int, size: int = 224) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


class BrightnessExpert(Expert):
    """P(roadwork) = mean brightness / 255 (``options.invert`` flips it). Logs every batch."""

    family = "engine_test_brightness"

    def load(self, device):
        self.device = device
        self.batches: typing.List[int] = []
        self.threads: typing.Set[str] = set()
        self.calls = 0

    def score(self, im) -> float:
        p = float(im.rgb.mean()) / 255.0
        return 1.0 - p if self.options.get("invert") else p

    def predict_batch(self, images):
        self.calls += 1
        self.batches.append(len(images))
        self.threads.add(threading.current_thread().name)
        return [Evidence(self.score(im), detail={"device": self.device}) for im in images]


class SlowExpert(BrightnessExpert):
    """Blocks its thread for ``options.seconds`` per batch (a big model on a busy card)."""

    family = "engine_test_slow"

    def predict_batch(self, images):
        time.sleep(float(self.options.get("seconds", 0.5)))
        return super().predict_batch(images)


class FlakyExpert(BrightnessExpert):
    """Raises for its first ``options.fail_first`` batches (all of them when absent), then answers."""

    family = "engine_test_flaky"

    def load(self, device):
        super().load(device)
        self.failures = 0

    def predict_batch(self, images):
        limit = self.options.get("fail_first")
        if limit is None or self.failures < int(limit):
            self.failures += 1
            raise RuntimeError(f"CUDA error: device-side assert (failure {self.failures})")
        return super().predict_batch(images)


class HangingExpert(BrightnessExpert):
    """Never returns until closed (a wedged GPU kernel); releases its thread on close()."""

    family = "engine_test_hanging"

    def load(self, device):
        super().load(device)
        self.release = threading.Event()
        self.entered = threading.Event()

    def predict_batch(self, images):
        self.entered.set()
        self.release.wait(60)
        return super().predict_batch(images)

    def close(self):
        self.release.set()


class StrictOptionsExpert(BrightnessExpert):
    """Checks its options in the constructor, as real families do (no loading needed)."""

    family = "engine_test_strict"

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        unknown = set(self.options) - {"invert", "mode"}
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        if self.options.get("mode", "off") not in ("off", "on"):
            raise ValueError(f"mode: expected 'off' or 'on', got {self.options['mode']!r}")


class BadLoadExpert(BrightnessExpert):
    family = "engine_test_bad_load"

    def load(self, device):
        raise FileNotFoundError(f"no weights at {self.spec.model}")


class SecondLoadFails(BrightnessExpert):
    """The first instance of an expert loads; later ones fail (a card without room for a replica)."""

    family = "engine_test_second_load_fails"
    loads: typing.Dict[str, int] = {}

    def load(self, device):
        key = self.options["key"]
        self.loads[key] = self.loads.get(key, 0) + 1
        if self.loads[key] > 1:
            raise MemoryError("CUDA out of memory (replica)")
        super().load(device)


_BARRIERS: typing.Dict[str, threading.Barrier] = {}


class BarrierExpert(BrightnessExpert):
    """Every batch waits at a barrier shared by ``options.parties`` replicas: it only passes when
    that many replicas run at the same time (a timeout breaks it and the batch raises)."""

    family = "engine_test_barrier"

    def load(self, device):
        super().load(device)
        key = self.options["barrier"]
        _BARRIERS.setdefault(key, threading.Barrier(int(self.options.get("parties", 2)), timeout=5))
        self.barrier = _BARRIERS[key]

    def predict_batch(self, images):
        self.barrier.wait()
        return super().predict_batch(images)


class LoopProbeExpert(BrightnessExpert):
    """Blocks until the event loop (``options.loop_event``, a threading.Event set by a coroutine)
    proves it ran while this model call was in progress; raises if the loop stayed frozen."""

    family = "engine_test_loop_probe"
    events: typing.Dict[str, typing.Tuple[threading.Event, threading.Event]] = {}

    def predict_batch(self, images):
        started, loop_ran = self.events[self.options["key"]]
        started.set()
        if not loop_ran.wait(5):
            raise RuntimeError("the event loop did not run while the model was busy")
        return super().predict_batch(images)


FAMILY_CLASSES = [StrictOptionsExpert, BrightnessExpert, SlowExpert, FlakyExpert, HangingExpert, BadLoadExpert,
                  SecondLoadFails, BarrierExpert, LoopProbeExpert]


def register() -> None:
    for cls in FAMILY_CLASSES:
        register_family(cls.family, f"{MODULE}:{cls.__name__}")


def make_profile(tmp_path, experts: typing.List[dict], tiers: typing.List[dict], name: str = "test",
                 consensus_json: typing.Optional[dict] = None, **top):
    """Write a YAML profile (and optionally its fitted consensus) under ``tmp_path`` and load it."""
    register()
    data = {"name": name, "experts": experts, "tiers": tiers, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if consensus_json is not None:
        import json

        path.with_name(f"{name}.consensus.json").write_text(json.dumps(consensus_json))
    return load_profile(path)


def tiny_timm(name: str, arch: str = "mobilenetv3_small_050", **extra) -> dict:
    """A real timm classifier with random weights at 64 px (fast on CPU)."""
    return {"name": name, "family": "timm", "model": arch, "device": "cpu", "max_batch": 8, "max_wait_ms": 5,
            "options": {"num_classes": 2, "image_size": 64}, **extra}
