"""The neuron on a real axon, queried by real dendrites on 127.0.0.1 (issue 2's done-when list)."""

from tests.support.paths import REPO_ROOT
import json
import math
import os
import subprocess
import time

import pytest

from natix_miner.config import MinerConfig
from natix_miner.miner.local import MinerThread, loopback_dendrite
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from tests.support.helpers import HangingExpert, MeanColourExpert, RaisingExpert, make_engine, profile_with

ROOT = REPO_ROOT
BT9_PYTHON = os.path.join(ROOT, ".venv-bt9", "bin", "python")


def _cfg(tmp_path, validator_hotkey, **extra) -> MinerConfig:
    mg = tmp_path / "metagraph.yaml"
    mg.write_text(f"- {{hotkey: {validator_hotkey}, stake: 5000, validator_permit: true}}\n"
                  "- {hotkey: 5C4hrfjw9DjXZTzV3MwzrrAr9P1MJhSrvWGWqi1eSuyUpnhM, stake: 1, validator_permit: false}\n")
    return MinerConfig.model_validate({
        "local": True, "local_metagraph": str(mg), "model_url": "https://huggingface.co/acme/roadwork",
        "axon": {"ip": "127.0.0.1", "port": 0}, "metrics": {"enabled": False}, **extra})


@pytest.fixture()
def colour_miner(tmp_path, validator_wallet, miner_wallet):
    prof = profile_with([("colour", "x", {})], [("fast", ["colour"], 2.0)])
    spec = prof.expert("colour")
    engine = make_engine(prof, colour=MeanColourExpert(spec, prof))
    with MinerThread(_cfg(tmp_path, validator_wallet.hotkey.ss58_address), engine=engine, wallet=miner_wallet) as m:
        yield m


async def _query(wallet, info, synapse, timeout=9.0):
    d = loopback_dendrite(wallet)
    try:
        return await d.forward(info, synapse, timeout=timeout, deserialize=False)
    finally:
        await d.aclose_session()


def _valid(p) -> bool:
    return isinstance(p, float) and math.isfinite(p) and 0.0 <= p <= 1.0 and p != 0.5


async def test_admitted_validator_gets_valid_answers_on_both_routes(colour_miner, validator_wallet, jpeg_b64):
    r1 = await _query(validator_wallet, colour_miner.info(), ImageSynapse(image=jpeg_b64))
    assert r1.axon.status_code == 200, r1.axon.status_message
    assert _valid(r1.prediction)
    r2 = await _query(validator_wallet, colour_miner.info(), ExtendedImageSynapse(image=jpeg_b64))
    assert r2.axon.status_code == 200
    assert _valid(r2.prediction)
    assert r2.model_url == "https://huggingface.co/acme/roadwork"
    assert abs(r1.prediction - r2.prediction) < 1e-9  # same image, same model


async def test_prediction_follows_the_model(colour_miner, validator_wallet):
    """Not a constant: an orange-heavy image scores higher than a grey one."""
    import numpy as np

    from natix_miner.imaging.decode import encode_jpeg_base64

    grey = np.full((224, 224, 3), 120, np.uint8)
    orange = grey.copy()
    orange[100:200, 60:160] = (240, 120, 20)
    pg = (await _query(validator_wallet, colour_miner.info(), ImageSynapse(image=encode_jpeg_base64(grey)))).prediction
    po = (await _query(validator_wallet, colour_miner.info(), ImageSynapse(image=encode_jpeg_base64(orange)))).prediction
    assert po > 0.9 and pg < 0.1


async def test_stranger_and_unpermitted_callers_get_403(colour_miner, jpeg_b64, tmp_path):
    from natix_miner.miner.wallet import ephemeral_wallet

    stranger = ephemeral_wallet("stranger", "x", str(tmp_path / "s"))
    r = await _query(stranger, colour_miner.info(), ImageSynapse(image=jpeg_b64))
    assert r.axon.status_code == 403
    assert r.prediction == -1.0


async def test_garbage_image_still_gets_a_valid_answer(colour_miner, validator_wallet):
    r = await _query(validator_wallet, colour_miner.info(), ImageSynapse(image="not base64 at all!!"))
    assert r.axon.status_code == 200
    assert _valid(r.prediction)


def _signed_request(validator_wallet, miner, image_b64, tamper=False):
    """Build the exact HTTP request a dendrite sends (headers + body) for replay/forgery tests."""
    d = loopback_dendrite(validator_wallet)
    syn = d.preprocess_synapse_for_request(miner.info(), ImageSynapse(image=image_b64), timeout=9.0)
    headers = syn.to_headers()
    if tamper:
        sig = headers["bt_header_dendrite_signature"]
        headers["bt_header_dendrite_signature"] = sig[:-4] + ("0000" if not sig.endswith("0000") else "1111")
    body = syn.model_dump(exclude={"dendrite", "axon"})
    return f"http://127.0.0.1:{miner.port}/ImageSynapse", headers, body


def test_forged_signature_is_rejected(colour_miner, validator_wallet, jpeg_b64):
    import requests

    url, headers, body = _signed_request(validator_wallet, colour_miner, jpeg_b64, tamper=True)
    r = requests.post(url, headers=headers, json=body, timeout=10)
    assert r.status_code in (401, 403), r.text
    assert "prediction" not in r.text or json.loads(r.text).get("prediction", -1.0) == -1.0


def test_replayed_nonce_is_rejected(colour_miner, validator_wallet, jpeg_b64):
    import requests

    url, headers, body = _signed_request(validator_wallet, colour_miner, jpeg_b64)
    first = requests.post(url, headers=headers, json=body, timeout=10)
    assert first.status_code == 200, first.text
    second = requests.post(url, headers=headers, json=body, timeout=10)
    assert second.status_code in (401, 403), second.text


@pytest.mark.parametrize("route", ["ImageSynapse", "ExtendedImageSynapse"])
def test_bittensor_9_12_2_dendrite_interoperates(colour_miner, validator_wallet, jpeg_b64, route):
    """The validators' own dendrite (bittensor 9.12.2, its own venv) queries our axon."""
    assert os.path.exists(BT9_PYTHON), "run scripts/setup.sh first: .venv-bt9 is part of the install"
    script = os.path.join(ROOT, "tests", "support", "bt9_client.py")
    wallet_dir = os.path.dirname(os.path.dirname(validator_wallet.hotkey_file.path))
    out = subprocess.run(
        [BT9_PYTHON, script, "--wallet-path", os.path.dirname(wallet_dir), "--wallet-name", validator_wallet.name,
         "--wallet-hotkey", validator_wallet.hotkey_str, "--port", str(colour_miner.port),
         "--axon-hotkey", colour_miner.hotkey, "--route", route, "--image-file", "-"],
        input=jpeg_b64, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["bittensor_version"] == "9.12.2"
    assert res["status_code"] == 200
    assert _valid(res["prediction"])
    if route == "ExtendedImageSynapse":
        assert res["model_url"] == "https://huggingface.co/acme/roadwork"


@pytest.mark.parametrize("bad", ["raising", "hanging"])
async def test_failing_or_hanging_engine_still_answers_in_time(tmp_path, validator_wallet, miner_wallet, jpeg_b64, bad):
    cls = {"raising": RaisingExpert, "hanging": HangingExpert}[bad]
    prof = profile_with([("bad", "x", {"seconds": 60})], [("fast", ["bad"], 3.0)], deadline_s=2.0,
                        fallback_probability=0.3)
    engine = make_engine(prof, bad=cls(prof.expert("bad"), prof))
    with MinerThread(_cfg(tmp_path, validator_wallet.hotkey.ss58_address), engine=engine, wallet=miner_wallet) as m:
        t0 = time.monotonic()
        r = await _query(validator_wallet, m.info(), ImageSynapse(image=jpeg_b64))
        took = time.monotonic() - t0
    assert r.axon.status_code == 200
    assert r.prediction == pytest.approx(0.3)
    assert took < 4.0


async def test_engine_that_raises_in_predict_is_caught(tmp_path, validator_wallet, miner_wallet, jpeg_b64):
    """Even an engine whose predict() itself raises yields the fallback, not -1."""
    prof = profile_with([("colour", "x", {})], [("fast", ["colour"], 2.0)], fallback_probability=0.2)
    engine = make_engine(prof, colour=MeanColourExpert(prof.expert("colour"), prof))

    async def broken(*a, **k):
        raise RuntimeError("engine bug")

    with MinerThread(_cfg(tmp_path, validator_wallet.hotkey.ss58_address), engine=engine, wallet=miner_wallet) as m:
        engine.predict = broken
        r = await _query(validator_wallet, m.info(), ImageSynapse(image=jpeg_b64))
    assert r.axon.status_code == 200
    assert r.prediction == pytest.approx(0.2)
