"""The mock validator against real axons on loopback: answers, fallbacks, timeouts, refused
connections and out-of-range answers, scored like the validator, reported per miner and slice."""

import asyncio
import json
import math
import socket
import threading

import numpy as np
import pytest

from natix_miner.config import MinerConfig
from natix_miner.synth.sources import ChallengeStream, ProceduralSource
from natix_miner.miner.local import MinerThread
from natix_miner.validator.mock import MockValidator, categorise
from natix_miner.validator.report import build_report, format_scoreboard, write_json, write_plot
from natix_miner.validator.reward import Scorer
from natix_miner.validator.targets import Target, parse_target
from tests.support.helpers import HangingExpert, MeanColourExpert, make_engine, profile_with



class SmallProcedural(ProceduralSource):
    """Procedural scenes at a small size (the generator is the real one), to keep tests fast."""

    def load(self, keys):
        from natix_miner.synth.scenes import render_scene

        return [(render_scene(label, seed, size=(256, 256) if syn else (320, 180), synthetic=syn).image,
                 f"procedural:{seed}", "") for label, seed, syn in keys]


def _miner(validator_hotkey, engine, wallet):
    cfg = MinerConfig.model_validate({"local": True, "axon": {"ip": "127.0.0.1", "port": 0},
                                      "metrics": {"enabled": False},
                                      "blacklist": {"allowed_hotkeys": [validator_hotkey]}})
    return MinerThread(cfg, engine=engine, wallet=wallet)


def _target(m, name) -> Target:
    return Target("127.0.0.1", m.port, m.hotkey, name, m.miner.wallet.coldkeypub.ss58_address)


@pytest.fixture(scope="module")
def miners(validator_wallet, miner_wallet, tmp_path_factory):
    from natix_miner.miner.wallet import ephemeral_wallet

    vhk = validator_wallet.hotkey.ss58_address
    prof = profile_with([("colour", "x", {})], [("fast", ["colour"], 2.0)])
    colour = _miner(vhk, make_engine(prof, colour=MeanColourExpert(prof.expert("colour"), prof)), miner_wallet)
    hprof = profile_with([("hang", "x", {"seconds": 30})], [("fast", ["hang"], 0.3)], deadline_s=0.5)
    hang_wallet = ephemeral_wallet("hang", "default", str(tmp_path_factory.mktemp("hwallet")))
    hang = _miner(vhk, make_engine(hprof, hang=HangingExpert(hprof.expert("hang"), hprof)), hang_wallet)
    with colour as c, hang as h:
        yield _target(c, "colour"), _target(h, "fallback")


def _silent_server():
    """A TCP server that accepts and never answers: what a stuck miner looks like on the wire."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []

    def accept():
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return srv, conns


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_categorise():
    assert categorise(0.7, "200") == "answered"
    assert categorise(0.49, "200") == "fallback" and categorise(0.5, "200") == "fallback"
    assert categorise(-1.0, "408") == "timeout" and categorise(-1.0, "503") == "missing"
    assert categorise(1.2, "200") == "invalid" and categorise(float("nan"), "200") == "invalid"
    assert categorise(-0.2, "200") == "invalid" and categorise(0.0, "200") == "answered"


def test_parse_target():
    t = parse_target("a=10.0.0.1:8091:5Fabc")
    assert (t.name, t.host, t.port, t.hotkey) == ("a", "10.0.0.1", 8091, "5Fabc")
    with pytest.raises(ValueError):
        parse_target("10.0.0.1:x:5F")
    with pytest.raises(ValueError):
        parse_target("10.0.0.1:8091")


def test_side_by_side_run_scores_like_the_validator(miners, validator_wallet, tmp_path):
    srv, _ = _silent_server()
    try:
        targets = list(miners) + [Target("127.0.0.1", srv.getsockname()[1], miners[0].hotkey, "silent"),
                                  Target("127.0.0.1", _closed_port(), miners[0].hotkey, "down")]
        stream = ChallengeStream(SmallProcedural(), seed=3)
        mv = MockValidator(validator_wallet, targets, stream, seed=3, timeout=2.0, concurrency=2)
        outcomes = asyncio.run(mv.run(6, progress=False, warmup=False))
    finally:
        srv.close()
    assert len(outcomes) == 6 * 4
    by = {t.name: [o for o in outcomes if o.miner == t.name] for t in targets}
    assert [o.index for o in by["colour"]] == list(range(6))
    assert all(o.category == "answered" and o.status == "200" for o in by["colour"])
    assert all(o.category == "fallback" and o.prediction == pytest.approx(0.49) for o in by["fallback"])
    assert all(o.category == "timeout" and o.status == "408" and o.reward == 0.0 for o in by["silent"])
    assert all(o.latency_ms >= 1900 for o in by["silent"])
    assert all(o.category == "missing" and o.reward == 0.0 for o in by["down"])
    # the same challenge went to every miner
    for i in range(6):
        assert len({(o.label, o.level, o.synthetic) for o in outcomes if o.index == i}) == 1
    # rewards are the validator's, recomputed independently from the recorded answers
    s = Scorer()
    for o in by["colour"]:
        q = s.score(0, "hk", o.prediction, o.label)
        assert o.reward == pytest.approx(q.reward) and o.ema == pytest.approx(q.ema)

    rep = build_report(outcomes, targets, config={"n": 6, "seed": 3}, duration_s=1.0)
    for key in ("n", "answered", "timeouts", "invalid", "mcc", "accuracy", "reward_mean", "ema"):
        assert key in rep
    assert set(rep["latency_ms"]) >= {"p50", "p95", "p99"}
    m = {x["name"]: x for x in rep["miners"]}
    assert m["colour"]["answered"] == 6 and m["silent"]["timeouts"] == 6 and m["down"]["missing"] == 6
    assert m["fallback"]["fallback"] == 6 and m["fallback"]["answered"] == 6
    assert sum(v["n"] for v in m["colour"]["by_level"].values()) == 6
    assert m["colour"]["by_source"]["real"]["n"] + m["colour"]["by_source"]["synthetic"]["n"] == 6
    text = format_scoreboard(rep)
    assert "colour" in text and "silent" in text and "level 3" in text and "synthetic" in text
    write_json(rep, str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["miners"][0]["name"] == "colour"
    write_plot(outcomes, targets, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_out_of_range_answers_are_invalid_and_zeroed(validator_wallet, miner_wallet):
    import bittensor as bt

    from natix_miner.protocol import ImageSynapse

    answers = [1.7, -0.3, 0.9, 1.7]

    def forward(synapse: ImageSynapse) -> ImageSynapse:
        synapse.prediction = answers[forward.calls % len(answers)]
        forward.calls += 1
        return synapse

    forward.calls = 0
    axon = bt.Axon(wallet=miner_wallet, ip="127.0.0.1", external_ip="127.0.0.1", port=_closed_port())
    axon.attach(forward_fn=forward)
    axon.start()
    try:
        target = Target("127.0.0.1", axon.port, miner_wallet.hotkey.ss58_address, "bad",
                        miner_wallet.coldkeypub.ss58_address)
        mv = MockValidator(validator_wallet, [target], ChallengeStream(SmallProcedural(), seed=1), seed=1)
        outs = asyncio.run(mv.run(4, progress=False, warmup=False))
    finally:
        axon.stop()
    assert [o.category for o in outs] == ["invalid", "invalid", "answered", "invalid"]
    assert outs[0].reward == 0.0 and outs[1].reward == 0.0 and outs[3].reward == 0.0
    rep = build_report(outs, [target])
    assert rep["invalid"] == 3 and rep["answered"] == 1
    assert all(math.isfinite(o.reward) for o in outs)


def test_seeded_runs_send_the_same_challenges(validator_wallet):
    def plan(seed):
        mv = MockValidator(validator_wallet, [], ChallengeStream(SmallProcedural(), seed=seed), seed=seed)
        return [(p.label, p.synthetic, p.level, p.b64) for p in mv.prepare_all(4)]

    a, b, c = plan(5), plan(5), plan(6)
    assert a == b and a != c
    assert {lv for _, _, lv, _ in a} <= {0, 1, 2, 3}
    assert np.mean([len(x[3]) > 1000 for x in a]) == 1.0
