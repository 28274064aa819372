"""The miner layer never imports torch (nor transformers, ultralytics, the engine): importing it,
starting a local miner on a stub :class:`~natix_miner.engine.client.EngineClient` and answering a
signed request through the real axon, blacklist, verify, priority and forward path, in a fresh process."""

import subprocess
import sys
import textwrap

from tests.support.paths import REPO_ROOT

HEAVY = ("torch", "transformers", "ultralytics", "timm", "natix_miner.engine.engine", "natix_miner.experts.timm_classifier")

SCRIPT = textwrap.dedent("""
    import asyncio, base64, sys, tempfile
    import natix_miner.miner.neuron, natix_miner.miner.local, natix_miner.miner.args  # the miner layer
    from natix_miner.config import MinerConfig
    from natix_miner.engine.client import EngineClient
    from natix_miner.miner.local import MinerThread, loopback_dendrite
    from natix_miner.miner.wallet import ephemeral_wallet
    from natix_miner.protocol import ImageSynapse
    from tests.support.stub_engine import StubEngine, expected_probability

    tmp = tempfile.mkdtemp()
    validator = ephemeral_wallet("validator", "default", tmp + "/v")
    miner_wallet = ephemeral_wallet("miner", "default", tmp + "/m")
    open(tmp + "/mg.yaml", "w").write(
        "- {hotkey: " + validator.hotkey.ss58_address + ", stake: 5000, validator_permit: true}\\n")
    cfg = MinerConfig.model_validate({"local": True, "local_metagraph": tmp + "/mg.yaml",
                                      "axon": {"ip": "127.0.0.1", "port": 0, "state_dir": tmp + "/state"},
                                      "metrics": {"enabled": False}})
    made = []

    def factory(profile):  # the path a deployment takes: Miner builds its engine from the parsed profile
        made.append(StubEngine(profile))
        return made[-1]
    image = base64.b64encode(bytes(range(256)) * 7).decode()

    async def ask(info):
        d = loopback_dendrite(validator)
        try:
            return await d.forward(info, ImageSynapse(image=image), timeout=9.0, deserialize=False)
        finally:
            await d.aclose_session()

    with MinerThread(cfg, wallet=miner_wallet, engine_factory=factory) as m:
        r = asyncio.run(ask(m.info()))
    engine = made[0]
    assert isinstance(engine, EngineClient) and engine.profile is cfg.cascade and engine.profile.name == "demo-cpu"
    assert r.axon.status_code == 200, (r.axon.status_code, r.axon.status_message)
    assert len(engine.calls) == 1 and engine.closed, (len(engine.calls), engine.closed)
    assert abs(r.prediction - expected_probability(image)) < 1e-9, (r.prediction, expected_probability(image))
    print("PREDICTION", r.prediction)
    print("HEAVY", sorted(m for m in HEAVY_NAMES if m in sys.modules))
""")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_miner_answers_a_signed_request_with_a_stub_engine_and_never_imports_torch():
    out = _run(SCRIPT.replace("HEAVY_NAMES", repr(HEAVY)))
    assert "PREDICTION" in out
    assert "HEAVY []" in out, out


def test_the_check_sees_a_heavy_module_when_it_is_imported():
    """Control: the same probe reports the in-process engine once something imports it (the check can
    fail; the engine stands in for torch, which takes seconds to import)."""
    out = _run("import sys, natix_miner.engine.engine\nprint('HEAVY', sorted(m for m in %r if m in sys.modules))"
               % (HEAVY,))
    assert "'natix_miner.engine.engine'" in out


def test_config_does_not_import_the_miner_layer():
    out = _run("import sys, natix_miner.config\nprint(sorted(m for m in sys.modules if m.startswith('natix_miner.miner')"
               " or m.startswith('natix_miner.engine')))")
    assert out.strip() == "[]", out
