"""Wire classes of NATIX StreetVision (subnet 72), exactly as validators send them.

Validators POST to ``/ImageSynapse`` (current) and, from validators at 2.0.1 or older,
``/ExtendedImageSynapse``. The route is the class name, so the class names are part of the
protocol and must never change.

Usage::

    from natix_miner.protocol import ImageSynapse
    syn = ImageSynapse(image=base64_jpeg)
    syn.prediction = 0.87          # filled by the miner
    syn.deserialize()              # -> 0.87

Note: no ``from __future__ import annotations`` here; bittensor inspects real annotations.
"""

import typing

import bittensor as bt
import pydantic


class ImageSynapse(bt.Synapse):
    """One challenge: a base64 JPEG in, P(roadwork) out (roadwork = 1, none = 0)."""

    testnet_label: int = pydantic.Field(
        title="Testnet label",
        description="Only ever set on testnet. Log it, never trust it.",
        default=-1,
        frozen=False,
    )
    image: str = pydantic.Field(
        title="Image",
        description="Standard base64 of a JPEG (PIL quality 75), RGB, normally 224x224.",
        default="",
        frozen=False,
    )
    prediction: float = pydantic.Field(
        title="Prediction",
        description="P(roadwork), filled by the miner; -1.0 means unanswered.",
        default=-1.0,
        frozen=False,
    )

    def deserialize(self) -> float:
        """Return the miner's prediction."""
        return self.prediction


class ExtendedImageSynapse(ImageSynapse):
    """Legacy route (validators at 2.0.1 or older): the same fields plus ``model_url``."""

    model_url: str = pydantic.Field(
        title="Model URL",
        description="The miner's model repository URL, filled by the miner.",
        default="",
        frozen=False,
    )


SYNAPSE_CLASSES: typing.Tuple[type, ...] = (ImageSynapse, ExtendedImageSynapse)
