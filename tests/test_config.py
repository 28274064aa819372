"""Profiles: validated at start, errors name the wrong key; fitted consensus beside the profile;
the shipped profiles pass ``natix-miner profile validate``."""

import json

import pytest
import yaml

from natix_miner.cli import main as cli_main
from natix_miner.config import CONFIG_DIR, ProfileError, load_profile
from natix_miner.engine import Engine
from tests.support.engine_experts import make_profile, register

register()

BASE = {
    "name": "p",
    "experts": [{"name": "a", "family": "engine_test_brightness"},
                {"name": "b", "family": "engine_test_brightness", "device": "cpu"}],
    "tiers": [{"name": "fast", "experts": ["a"]}, {"name": "slow", "experts": ["b"]}],
}


def write(tmp_path, data, name="p"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path, data) -> str:
    with pytest.raises(ProfileError) as ei:
        load_profile(write(tmp_path, data))
    return str(ei.value)


def edit(**changes):
    data = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return data


def test_valid_profile_loads(tmp_path):
    prof = load_profile(write(tmp_path, BASE))
    assert [t.name for t in prof.tiers] == ["fast", "slow"]
    assert prof.expert("b").replica_devices == ["cpu"]
    assert prof.consensus.normalize is True and prof.consensus.weights == {}


@pytest.mark.parametrize("changes, where, what", [
    ({"tiers__0__budget_s": 0}, "tiers.0(fast).budget_s", "greater than 0"),
    ({"tiers__0__budget_s": "soon"}, "tiers.0(fast).budget_s", "valid number"),
    ({"experts__1__device": "gpu0"}, "experts.1(b).device", "pattern"),
    ({"experts__0__dtype": "float64"}, "experts.0(a).dtype", "Input should be 'float32', 'float16'"),
    ({"experts__0__max_batch": 0}, "experts.0(a).max_batch", "greater than or equal to 1"),
    ({"experts__0__colour": "red"}, "experts.0(a).colour", "Extra inputs are not permitted"),
    ({"experts__0__family": KeyError}, "experts.0(a).family", "Field required"),
    ({"experts__0__devices": ["cuda:0", "cuda:1"], "experts__0__device": "cuda:0"}, "experts.0(a)",
     "give device or devices"),
    ({"experts__0__devices": ["cpu", "cpu"], "experts__0__replicas": 3}, "experts.0(a)", "replicas (3)"),
    ({"experts__0__devices": ["cpu", "tpu"]}, "experts.0(a).devices.1", "pattern"),
    ({"tiers__1__experts": ["c"]}, "<root>", "tiers.1.experts: unknown expert 'c'"),
    ({"tiers__1__experts": ["a", "b"]}, "<root>", "expert 'a' is already in tier 'fast'"),
    ({"experts__1__name": "a"}, "<root>", "duplicate names ['a']"),
    ({"escalation": {"low": 0.9, "high": 0.1}}, "escalation", "must not exceed high"),
    ({"tiers__1__escalation": {"low": 1.5}}, "tiers.1(slow).escalation.low", "less than or equal to 1"),
    ({"consensus": {"weights": {"zz": 1.0}}}, "<root>", "consensus.weights: unknown expert 'zz'"),
    ({"consensus": {"stages": {"nope": {}}}}, "<root>", "consensus.stages: unknown tier 'nope'"),
    ({"consensus": {"temperature": 0}}, "consensus.temperature", "greater than 0"),
    ({"deadline_s": 12}, "deadline_s", "less than or equal to 9"),
    ({"cache": {"ttl": 5}}, "cache.ttl", "Extra inputs"),
])
def test_errors_name_the_wrong_key(tmp_path, changes, where, what):
    msg = error_of(tmp_path, edit(**changes))
    assert f"p.yaml: {where}: " in msg, msg
    assert what in msg, msg


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ProfileError, match="top level must be a mapping"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="profile not found"):
        load_profile(tmp_path / "missing.yaml")


async def test_unknown_family_is_refused_at_start(tmp_path):
    prof = load_profile(write(tmp_path, edit(experts__1__family="no_such_family")))
    engine = Engine(prof)
    with pytest.raises(ProfileError, match=r"experts\.1\(b\)\.family: unknown family 'no_such_family'"):
        await engine.start()


@pytest.mark.parametrize("options, what", [({"colour": 1}, "unknown options ['colour']"),
                                           ({"mode": False}, "mode: expected 'off' or 'on', got False")])
async def test_options_a_family_refuses_are_profile_errors(tmp_path, capsys, options, what):
    """``mode: off`` unquoted is YAML's boolean false: caught by validate and at start, by key."""
    data = edit(experts__1__family="engine_test_strict", experts__1__options=options)
    path = write(tmp_path, data)
    assert cli_main(["profile", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "p.yaml: experts.1(b).options: ValueError: " in err and what in err, err
    with pytest.raises(ProfileError, match=r"experts\.1\(b\)\.options"):
        await Engine(load_profile(path)).start()


def test_fitted_consensus_beside_the_profile_overrides(tmp_path):
    fitted = {"weights": {"a": 1.5, "b": 0.5}, "bias": -0.2, "temperature": 1.1,
              "stages": {"fast": {"weights": {"a": 2.0}, "bias": 0.1}},
              "fitted_at": "2026-01-01T00:00:00Z", "n_samples": 1234, "metrics": {"mcc": 0.8}}
    prof = make_profile(tmp_path, BASE["experts"], BASE["tiers"], name="p", consensus_json=fitted,
                        consensus={"weights": {"a": 9.0}, "bias": 3.0})
    assert prof.consensus_file == tmp_path / "p.consensus.json"
    c = prof.consensus
    assert c.weights == {"a": 1.5, "b": 0.5} and c.bias == -0.2 and c.temperature == 1.1
    assert c.normalize is False  # fitted weights are raw coefficients unless the file says otherwise
    assert c.stages["fast"].weights == {"a": 2.0} and c.stages["fast"].normalize is True


@pytest.mark.parametrize("fitted, what", [
    ({"weights": {"ghost": 1.0}}, "weights: experts not in the profile: ['ghost']"),
    ({"stages": {"fast": {"weights": {"ghost": 1.0}}}}, "stages.fast.weights: experts not in the profile"),
    ({"bias": "high"}, "bias: Input should be a valid number"),
    ({"temperature": -1}, "temperature: Input should be greater than 0"),
    ([1, 2], "top level must be an object"),
])
def test_bad_fitted_consensus_names_the_json_file(tmp_path, fitted, what):
    write(tmp_path, BASE)
    (tmp_path / "p.consensus.json").write_text(json.dumps(fitted))
    with pytest.raises(ProfileError) as ei:
        load_profile(tmp_path / "p.yaml")
    assert "p.consensus.json: " in str(ei.value) and what in str(ei.value), str(ei.value)


def test_fitted_consensus_not_json(tmp_path):
    write(tmp_path, BASE)
    (tmp_path / "p.consensus.json").write_text("{weights: ")
    with pytest.raises(ProfileError, match="p.consensus.json: not valid JSON"):
        load_profile(tmp_path / "p.yaml")


def test_cli_validate_reports_the_key(tmp_path, capsys):
    path = write(tmp_path, edit(tiers__0__budget_s=-1))
    assert cli_main(["profile", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "tiers.0(fast).budget_s" in err


@pytest.mark.parametrize("name", ["h100x1", "h100x2"])
def test_shipped_gpu_profiles_validate(name, capsys):
    path = CONFIG_DIR / f"{name}.yaml"
    assert cli_main(["profile", "validate", str(path)]) == 0, capsys.readouterr().err
    assert "ok:" in capsys.readouterr().out
    prof = load_profile(path)
    devices = {d for e in prof.experts for d in e.replica_devices}
    assert devices <= {"cuda:0", "cuda:1", "cpu"}, devices
    if name == "h100x2":
        assert {"cuda:0", "cuda:1"} <= devices
        assert any(len(set(e.replica_devices)) == 2 for e in prof.experts), "no data-parallel expert"
    else:
        assert "cuda:1" not in devices
    assert any(e.family == "vllm" for e in prof.experts)
    assert len(prof.tiers) >= 3


def test_shipped_gpu_profiles_fit_their_cards():
    """The dry-run placement of every shipped GPU profile fits 0.9 of an 80 GB H100 per card."""
    from natix_miner.engine.placement import GiB, Placement

    for name, cards in (("h100x1", 1), ("h100x2", 2)):
        prof = load_profile(CONFIG_DIR / f"{name}.yaml")
        plan = Placement(prof.gpu_memory_fraction, inventory={f"cuda:{i}": 80 * GiB for i in range(cards)})
        rows = plan.plan(prof.tiered_experts)
        assert len(rows) == sum(len(e.replica_devices) for e in prof.tiered_experts)
        for dev in plan.gpus:
            assert 0 < plan.used[dev] <= plan.budget[dev], (name, dev, plan.table())
