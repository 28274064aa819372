"""Placement: the plan for a given device inventory and memory figures, replicas, the table."""

import pytest

from natix_miner.config import ExpertSpec
from natix_miner.engine import Engine
from natix_miner.engine.placement import GiB, Placement, PlacementError, load_order
from tests.support.engine_experts import make_profile, noise_jpeg


def spec(name, device="auto", gb=None, **kw):
    return ExpertSpec(name=name, family="timm", device=device, memory_gb=gb, **kw)


def two_cards(**kw):
    return Placement(0.9, inventory={"cuda:0": 80 * GiB, "cuda:1": 80 * GiB}, **kw)


def test_budget_is_fraction_minus_memory_already_taken():
    p = two_cards(in_use={"cuda:1": 10 * GiB})
    assert p.budget == {"cuda:0": 72 * GiB, "cuda:1": 62 * GiB}


def test_plan_largest_first_onto_the_card_with_most_budget_left():
    p = two_cards()
    rows = p.plan([spec("small", gb=2), spec("vlm", gb=40), spec("big", gb=30), spec("mid", gb=10)])
    where = {r.expert: r.device for r in rows}
    assert [r.expert for r in rows] == ["vlm", "big", "mid", "small"]
    assert where == {"vlm": "cuda:0", "big": "cuda:1", "mid": "cuda:1", "small": "cuda:0"}
    assert p.used == {"cuda:0": 42 * GiB, "cuda:1": 40 * GiB}


def test_pins_are_kept_and_counted():
    p = two_cards()
    p.plan([spec("pinned", device="cuda:1", gb=50), spec("auto", gb=30)])
    assert [(r.expert, r.device) for r in p.placed] == [("pinned", "cuda:1"), ("auto", "cuda:0")]


def test_nothing_fits_is_a_clear_error():
    p = two_cards(in_use={"cuda:0": 60 * GiB, "cuda:1": 60 * GiB})
    with pytest.raises(PlacementError, match=r"needs 20.0 GiB; the most budget left is 12.0 GiB"):
        p.assign(spec("huge", gb=20))
    with pytest.raises(PlacementError, match="cuda:7 does not exist"):
        p.assign(spec("ghost", device="cuda:7"))


def test_replicas_spread_over_cards():
    p = two_cards()
    p.assign(spec("vlm", device="cuda:0", gb=40))
    assert p.assign(spec("cls", gb=1, replicas=2)) == ["cuda:1", "cuda:0"]
    assert p.assign(spec("det", gb=1, devices=["cuda:0", "cuda:1"])) == ["cuda:0", "cuda:1"]
    assert p.assign(spec("three", gb=1, replicas=3)) == ["cuda:1", "cuda:0", "cuda:1"]
    labels = [r.label for r in p.placed]
    assert labels[:3] == ["vlm", "cls[0]", "cls[1]"]


def test_measured_memory_replaces_the_hint():
    p = two_cards()
    (dev,) = p.assign(spec("a", gb=10))
    assert p.used[dev] == 10 * GiB
    p.record("a", 0, dev, 3 * GiB)
    assert p.used[dev] == 3 * GiB and p.placed[0].measured
    (dev_b,) = p.assign(spec("b"))  # no hint: goes where most is left, after a's real figure
    assert dev_b != dev or p.budget_left("cuda:1") == p.budget_left("cuda:0")
    p.record("b", 0, dev_b, 5 * GiB)
    p.release("a", 0)
    assert p.used[dev] == (5 * GiB if dev_b == dev else 0)


def test_no_gpu_means_cpu_even_for_pins():
    p = Placement(0.9, inventory={})
    assert p.assign(spec("a", device="cuda:1")) == ["cpu"]
    assert p.assign(spec("b", devices=["cuda:0", "cuda:1"])) == ["cpu", "cpu"]
    with pytest.raises(PlacementError, match="requires cuda:0"):
        p.assign(spec("c", device="cuda:0", options={"require_gpu": True}))


def test_table_shows_expert_device_memory_and_share():
    p = two_cards()
    p.assign(spec("vlm", device="cuda:1", gb=40))
    p.assign(spec("cls", gb=1, replicas=2))
    p.record("cls", 0, "cuda:0", 512 * 1024 ** 2)
    table = p.table()
    lines = table.splitlines()
    assert lines[0].split() == ["expert", "device", "memory", "share", "of", "card"]
    assert any(line.split()[:5] == ["vlm", "cuda:1", "40.00", "GiB", "(hint)"] and "50.0%" in line for line in lines)
    assert any(line.split()[:4] == ["cls[0]", "cuda:0", "512.0", "MiB"] and "0.6%" in line for line in lines)
    assert any(line.startswith("= cuda:1 total") and "51.2%" in line for line in lines), table


def test_load_order_is_largest_hint_first():
    order = load_order([spec("a", gb=1), spec("b"), spec("c", gb=30), spec("d", gb=1)])
    assert [s.name for s in order] == ["c", "a", "d", "b"]


async def test_engine_start_prints_the_plan_and_status_reports_devices(tmp_path, caplog):
    prof = make_profile(tmp_path, experts=[{"name": "a", "family": "engine_test_brightness", "replicas": 2},
                                           {"name": "b", "family": "engine_test_brightness", "device": "cpu"},
                                           {"name": "spare", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["a", "b"]}])
    caplog.set_level("INFO", logger="natix_miner.engine")
    async with Engine(prof, placement=Placement(0.9, inventory={})) as engine:
        await engine.predict(noise_jpeg(0))
        st = engine.status()
    text = caplog.text
    assert "placement (profile test)" in text and "a[0]" in text and "a[1]" in text
    assert st["devices"]["cpu"]["experts"] == ["a[0]", "a[1]", "b"]
    assert st["experts"]["a"]["devices"] == ["cpu", "cpu"]
    assert "spare" not in engine.pools and "spare" not in st["experts"]  # in no tier: not loaded
