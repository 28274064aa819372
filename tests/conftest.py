"""Test-wide setup: offline everywhere, a bundled font for ultralytics, shared fixtures."""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from natix_miner.offline import enforce_offline  # noqa: E402

enforce_offline(os.path.join(tempfile.gettempdir(), "natix-test-yolo"))
os.environ.setdefault("BT_NO_PARSE_CLI_ARGS", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def validator_wallet(tmp_path_factory):
    from natix_miner.miner.wallet import ephemeral_wallet

    return ephemeral_wallet("validator", "default", str(tmp_path_factory.mktemp("vwallet")))


@pytest.fixture(scope="session")
def miner_wallet(tmp_path_factory):
    from natix_miner.miner.wallet import ephemeral_wallet

    return ephemeral_wallet("miner", "default", str(tmp_path_factory.mktemp("mwallet")))


@pytest.fixture()
def jpeg_b64():
    """A real 224x224 JPEG at quality 75, base64 - what validators send."""
    import numpy as np

    from natix_miner.imaging.decode import encode_jpeg_base64

    rng = np.random.default_rng(0)
    return encode_jpeg_base64((rng.random((224, 224, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """``stand_ins(profile name) -> directory`` of tiny stand-in weights (``natix_miner/standins``), built on
    first use and shared by every test file of the session (tests/standins/test_standins.py, test_bench_cascade.py)."""
    from natix_miner.config import load_profile
    from natix_miner.standins.build import build_profile

    built = {}

    def get(name: str) -> str:
        if name not in built:
            out = tmp_path_factory.mktemp(f"stand-ins-{name}")
            build_profile(load_profile(name, stand_ins=False, device=False), "tiny", out)
            built[name] = str(out)
        return built[name]

    return get


@pytest.fixture(autouse=True)
def _restore_expert_registry():
    """Tests may register test-only expert families; each test gets the registry back as it was."""
    from natix_miner.experts import FAMILIES

    saved = dict(FAMILIES)
    yield
    FAMILIES.clear()
    FAMILIES.update(saved)
