"""Who may query the miner (blacklist) and in which order (priority), before any decoding.

Rules, as the reference miner plus an explicit allow-list:

* a hotkey in ``blacklist.allowed_hotkeys`` is always admitted;
* the metagraph comes from the chain, or in local mode from ``--local.metagraph`` (a file);
* otherwise the caller must be registered on the subnet (unless ``allow_non_registered``), hold a
  validator permit when ``force_validator_permit``, and have at least ``min_stake``;
* priority is the caller's stake (allow-listed callers get the highest stake seen, at least 1).

Usage::

    gate = Gate(cfg.blacklist, local=True)
    gate.update(hotkeys=[...], stakes=[...], permits=[...])   # from the metagraph
    gate.check(hotkey)    # -> (blocked, reason)
    gate.priority(hotkey) # -> float
"""

import threading
import typing

from natix_miner.config import BlacklistConfig


class Gate:
    def __init__(self, cfg: BlacklistConfig, local: bool = False):
        self.cfg = cfg
        self.local = local
        self.allowed = set(cfg.allowed_hotkeys)
        self._lock = threading.Lock()
        self._stake: typing.Dict[str, float] = {}
        self._permit: typing.Dict[str, bool] = {}

    def allow(self, hotkey: str) -> None:
        with self._lock:
            self.allowed.add(hotkey)

    def update(self, hotkeys: typing.Sequence[str], stakes: typing.Sequence[float],
               permits: typing.Sequence[bool]) -> None:
        with self._lock:
            self._stake = {h: float(s) for h, s in zip(hotkeys, stakes)}
            self._permit = {h: bool(p) for h, p in zip(hotkeys, permits)}

    @property
    def known(self) -> int:
        return len(self._stake)

    def check(self, hotkey: typing.Optional[str]) -> typing.Tuple[bool, str]:
        if not hotkey:
            return True, "missing dendrite hotkey"
        with self._lock:
            if hotkey in self.allowed:
                return False, "allow-listed"
            if hotkey not in self._stake:
                if self.cfg.allow_non_registered:
                    return False, "non-registered allowed"
                return True, "unregistered hotkey"
            if self.cfg.force_validator_permit and not self._permit.get(hotkey, False):
                return True, "no validator permit"
            if self._stake[hotkey] < self.cfg.min_stake:
                return True, f"stake {self._stake[hotkey]:.1f} below {self.cfg.min_stake}"
            return False, "registered validator"

    def priority(self, hotkey: typing.Optional[str]) -> float:
        with self._lock:
            if hotkey in self.allowed:
                return max([1.0] + list(self._stake.values()))
            return float(self._stake.get(hotkey or "", 0.0))


def load_metagraph_file(path: str) -> typing.Tuple[typing.List[str], typing.List[float], typing.List[bool]]:
    """Local mode's metagraph: a YAML or JSON list of ``{hotkey, stake, validator_permit}``.

    Example (``local-metagraph.yaml``)::

        - {hotkey: 5F..., stake: 120000, validator_permit: true}
        - {hotkey: 5G..., stake: 10, validator_permit: false}
    """
    import yaml  # JSON is YAML

    with open(path) as f:
        data = yaml.safe_load(f)
    if isinstance(data, dict) and "neurons" in data:
        data = data["neurons"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of {{hotkey, stake, validator_permit}}")
    hotkeys, stakes, permits = [], [], []
    for i, row in enumerate(data):
        if not isinstance(row, dict) or "hotkey" not in row:
            raise ValueError(f"{path}: entry {i} needs a 'hotkey'")
        hotkeys.append(str(row["hotkey"]))
        try:
            stakes.append(float(row.get("stake", 0.0)))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: entry {i}: stake must be a number") from None
        permits.append(bool(row.get("validator_permit", False)))
    return hotkeys, stakes, permits
