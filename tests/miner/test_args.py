"""The neuron's flags (the ones operators know from the reference miner) into the typed config."""

import pytest

from natix_miner.miner.args import build_config


def test_reference_miner_flags_map_onto_the_config():
    cfg = build_config([
        "--netuid", "72", "--subtensor.network", "finney", "--subtensor.chain_endpoint", "wss://x:443",
        "--wallet.name", "cold", "--wallet.hotkey", "hot", "--wallet.path", "/w", "--axon.port", "8091",
        "--axon.external_ip", "1.2.3.4", "--logging.debug", "--blacklist.force_validator_permit", "false",
        "--blacklist.min_stake", "1000", "--profile", "h100x2", "--metrics.port", "9200",
        "--model_url", "https://huggingface.co/a/b"], env={})
    assert cfg.chain.netuid == 72 and cfg.chain.network == "finney" and cfg.chain.chain_endpoint == "wss://x:443"
    assert (cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path) == ("cold", "hot", "/w")
    assert cfg.axon.port == 8091 and cfg.axon.external_ip == "1.2.3.4"
    assert cfg.logging.level == "DEBUG"
    assert cfg.blacklist.force_validator_permit is False and cfg.blacklist.min_stake == 1000
    assert cfg.profile.endswith("configs/h100x2.yaml") and cfg.metrics.port == 9200
    assert cfg.model_url == "https://huggingface.co/a/b" and cfg.local is False


def test_cli_beats_environment_beats_defaults():
    cfg = build_config(["--axon.port", "9000", "--allow-demo"], env={"NATIX_AXON_PORT": "7000", "NATIX_NETUID": "323"})
    assert cfg.axon.port == 9000 and cfg.chain.netuid == 323


def test_local_mode_and_metagraph_file(tmp_path):
    mg = tmp_path / "mg.json"
    mg.write_text('[{"hotkey": "5F", "stake": 10, "validator_permit": true}]')
    cfg = build_config(["--local", "--local.metagraph", str(mg)], env={})
    assert cfg.local and cfg.local_metagraph == str(mg)


@pytest.mark.parametrize("argv, needle", [
    (["--axon.port", "70000"], "axon.port"),
    (["--profile", "no-such-profile"], "profile not found"),
])
def test_bad_flags_fail_with_the_key_named(argv, needle):
    with pytest.raises(Exception) as err:
        build_config(argv, env={})
    assert needle in str(err.value)


def test_the_profile_is_parsed_once_and_handed_to_the_neuron_and_engine(monkeypatch, tmp_path):
    """build_config reads the profile file (its miner: section below the flags) and keeps the parsed
    Profile in cfg.cascade; the Miner and the engine it builds use that very object: one read in all."""
    import natix_miner.config as config_mod
    import natix_miner.miner.args as args_mod
    from natix_miner.miner.neuron import Miner
    from tests.support.stub_engine import StubEngine

    prof = tmp_path / "mine.yaml"
    prof.write_text(open(config_mod.resolve_profile_path("demo-cpu")).read() + "\nminer:\n  axon: {port: 9311}\n")
    reads = []
    real = config_mod.load_profile

    def counting(*a, **kw):
        reads.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(args_mod, "load_profile", counting)
    monkeypatch.setattr(config_mod, "load_profile", counting)
    cfg = build_config(["--profile", str(prof), "--local"], env={})
    assert cfg.axon.port == 9311 and cfg.cascade is not None and cfg.cascade.path == str(prof)
    assert "cascade" not in cfg.model_dump()  # the parsed profile is not part of the config's data
    built = []
    miner = Miner(cfg, engine_factory=lambda p: built.append(p) or StubEngine(p))
    assert miner.profile is cfg.cascade
    assert miner.engine_factory(miner.profile).profile is cfg.cascade and built == [cfg.cascade]
    assert len(reads) == 1


def test_a_config_built_by_hand_loads_its_profile_once():
    from natix_miner.config import MinerConfig

    cfg = MinerConfig(local=True)
    assert cfg.cascade is None
    first = cfg.load_cascade()
    assert first.name == "demo-cpu" and cfg.load_cascade() is first
