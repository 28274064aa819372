"""The in-process Engine implements the EngineClient protocol the miner layer depends on: every member,
with the protocol's coroutine-ness and parameters (a renamed or re-typed member fails here, not on chain)."""

import inspect

import pytest

from natix_miner.config import load_profile
from natix_miner.engine import Engine
from natix_miner.engine.client import EngineClient, local_engine
from tests.support.stub_engine import StubEngine

MEMBERS = ("start", "predict", "status", "degraded_report", "close")


def _params(fn):
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("impl", [Engine, StubEngine])
def test_implementations_match_the_protocol(impl):
    for name in MEMBERS:
        want, got = getattr(EngineClient, name), getattr(impl, name)
        assert inspect.iscoroutinefunction(want) == inspect.iscoroutinefunction(got), name
        # the protocol's parameters, in order, with the same defaults; an implementation may add optional ones
        assert _params(got)[:len(_params(want))] == _params(want), name
        assert all(d is not inspect.Parameter.empty for _, d in _params(got)[len(_params(want)):]), name


def test_local_engine_builds_the_in_process_engine_on_the_given_profile():
    profile = load_profile("demo-cpu")
    engine = local_engine(profile)
    assert isinstance(engine, Engine) and isinstance(engine, EngineClient)
    assert engine.profile is profile and engine.ready is False
    assert isinstance(StubEngine(), EngineClient)


def test_an_object_missing_a_member_is_not_a_client():
    class Partial:
        profile, ready = None, False

        async def predict(self, image, deadline=None, all_tiers=False):
            return None

    assert not isinstance(Partial(), EngineClient)
