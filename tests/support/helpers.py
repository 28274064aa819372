"""Small real experts and builders shared by tests (real Expert subclasses, not mocks)."""

import time

import numpy as np

from natix_miner.config import Profile
from natix_miner.experts.base import Evidence, Expert


class MeanColourExpert(Expert):
    """A real (if simple) model: logistic score of the image's orange-pixel share."""

    family = "test_mean_colour"

    def load(self, device):
        self.device = device

    def predict_batch(self, images):
        out = []
        for im in images:
            rgb = im.rgb.astype(np.float32)
            orange = ((rgb[..., 0] > 180) & (rgb[..., 1] > 60) & (rgb[..., 1] < 170) & (rgb[..., 2] < 90)).mean()
            z = 60.0 * (orange - 0.05)
            out.append(Evidence(1.0 / (1.0 + np.exp(-z)), detail={"orange": float(orange)}))
        return out


class RaisingExpert(Expert):
    family = "test_raising"

    def load(self, device):
        self.device = device

    def predict_batch(self, images):
        raise RuntimeError("boom")


class HangingExpert(Expert):
    family = "test_hanging"

    def load(self, device):
        self.device = device
        self.seconds = float(self.options.get("seconds", 30))

    def predict_batch(self, images):
        time.sleep(self.seconds)
        return [Evidence(0.9) for _ in images]


def profile_with(experts, tiers, **kw) -> Profile:
    """A Profile from compact lists: experts=[(name, family, options)], tiers=[(name, [names], budget)]."""
    return Profile.model_validate({
        "name": kw.pop("name", "test"),
        "experts": [{"name": n, "family": f, "options": o or {}} for n, f, o in experts],
        "tiers": [{"name": n, "experts": e, "budget_s": b} for n, e, b in tiers],
        **kw,
    })


def make_engine(profile, **instances):
    """An Engine whose experts are the given instances (keyed by expert name)."""
    from natix_miner.engine import Engine

    return Engine(profile, experts=instances)
