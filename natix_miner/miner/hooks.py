"""Observation hooks the neuron calls; ops (metrics, tracing) implement them. No-ops by default.

Usage::

    class MyHooks(MinerHooks):
        def request(self, route, outcome, seconds, result=None, hotkey=None): ...
    miner = Miner(cfg, hooks=MyHooks())
"""

import typing


class MinerHooks:
    def started(self, miner: typing.Any) -> None:
        """The engine is loaded and the axon is serving."""

    def request(self, route: str, outcome: str, seconds: float, result: typing.Any = None,
                hotkey: typing.Optional[str] = None) -> None:
        """One answered request. ``outcome``: answered | fallback | error."""

    def blacklisted(self, route: str, reason: str, hotkey: typing.Optional[str] = None) -> None:
        """A request refused before decoding."""

    def status(self, status: typing.Dict[str, typing.Any]) -> None:
        """The status after each resync: uid, stake, trust, incentive, emission, validators, answers."""

    def stopped(self) -> None:
        """The miner is shutting down."""


class MultiHooks(MinerHooks):
    """Fan out to several hooks; one failing hook never affects an answer."""

    def __init__(self, *hooks: MinerHooks):
        self.hooks = [h for h in hooks if h is not None]

    def _each(self, method: str, *args, **kwargs) -> None:
        for h in self.hooks:
            try:
                getattr(h, method)(*args, **kwargs)
            except Exception:  # noqa: BLE001 - observability must never break serving
                pass

    def started(self, miner):
        self._each("started", miner)

    def request(self, route, outcome, seconds, result=None, hotkey=None):
        self._each("request", route, outcome, seconds, result=result, hotkey=hotkey)

    def blacklisted(self, route, reason, hotkey=None):
        self._each("blacklisted", route, reason, hotkey=hotkey)

    def status(self, status):
        self._each("status", status)

    def stopped(self):
        self._each("stopped")
