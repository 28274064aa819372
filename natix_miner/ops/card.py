"""``model_card.json`` for the miner's public Hugging Face model repository (spec section 4).

Exactly five keys, in this order::

    {"model_name": "...", "description": "...", "version": "X.Y.Z",
     "submitted_by": "<hotkey ss58>", "submission_time": <unix seconds, int>}

Usage::

    card = build_card("acme-roadwork-cascade", "ConvNeXt + DINOv2 cascade", "1.2.0", wallet.hotkey.ss58_address)
    write_card(card, "model_card.json")
"""

import json
import os
import re
import time
import typing

VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
CARD_KEYS = ("model_name", "description", "version", "submitted_by", "submission_time")


class CardError(ValueError):
    pass


def build_card(model_name: str, description: str, version: str, hotkey_ss58: str,
               submission_time: typing.Optional[int] = None) -> dict:
    from bittensor_wallet.utils import is_valid_ss58_address

    if not model_name or not model_name.strip():
        raise CardError("model_name must not be empty (it must be unique among miners)")
    if not VERSION_RE.match(version or ""):
        raise CardError(f"version must look like X.Y.Z (digits), got {version!r}")
    if not is_valid_ss58_address(hotkey_ss58 or ""):
        raise CardError(f"submitted_by must be the hotkey's ss58 address, got {hotkey_ss58!r}")
    return {
        "model_name": model_name.strip(),
        "description": description or "",
        "version": version,
        "submitted_by": hotkey_ss58,
        "submission_time": int(submission_time if submission_time is not None else time.time()),
    }


def write_card(card: dict, path: str = "model_card.json") -> str:
    """Write the card as pretty JSON (keys in spec order); returns the path."""
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise CardError(f"card lacks {missing}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({k: card[k] for k in CARD_KEYS}, f, indent=2)
        f.write("\n")
    return path
