"""The throughput path (``BulkPredictor``) and the benchmark behind docs/benchmarks.md, on the CPU.

Real timm models with one shared set of random weights (saved to a file so every replica loads
the same model); the bulk answers must agree with the online engine's, keep their order across
replica processes (each keeps one batch in flight), and give undecodable images the fallback.
"""

import argparse

import numpy as np
import pytest

from natix_miner.engine import Engine
from natix_miner.engine.bulk import BulkPredictor
from tests.support.engine_experts import make_profile, noise_jpeg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=2)
    path = tmp_path_factory.mktemp("w") / "mnv3.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def _profile(tmp_path, weights, fallback=0.37):
    return make_profile(tmp_path, experts=[{"name": "fast", "family": "timm", "model": "mobilenetv3_small_050",
                                            "device": "cpu", "max_batch": 8, "max_wait_ms": 0,
                                            "options": {"num_classes": 2, "image_size": 64, "weights": weights,
                                                        "decode_threads": 2}}],
                        tiers=[{"name": "fast", "experts": ["fast"], "budget_s": 8}],
                        cache={"max_entries": 0}, fallback_probability=fallback)


def _images(n, size=64):
    return [noise_jpeg(i, size) for i in range(n)]


async def test_bulk_answers_match_the_online_engine(tmp_path, weights):
    prof = _profile(tmp_path, weights)
    datas = _images(12)
    bulk = BulkPredictor(prof, ["cpu", "cpu"], batch_size=5)
    bulk.load()
    try:
        got = bulk.predict(datas)
    finally:
        bulk.close()
    async with Engine(prof) as engine:
        want = np.array([(await engine.predict(d)).probability for d in datas])
    assert got.shape == (12,) and got.dtype == np.float64
    assert np.ptp(want) > 1e-4  # different images, different answers: the comparison means something
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_replica_processes_keep_the_order_and_pipeline(tmp_path, weights):
    """Two worker processes, batches of 3, one batch in flight each: every answer lands at its own
    index (shuffled inputs give the same answers, shuffled the same way)."""
    prof = _profile(tmp_path, weights)
    datas = _images(20)
    perm = np.random.default_rng(1).permutation(len(datas))
    ref = BulkPredictor(prof, ["cpu"], batch_size=20, mode="thread")
    ref.load()
    want = ref.predict(datas)
    ref.close()
    bulk = BulkPredictor(prof, ["cpu"], batch_size=3, replicas_per_device=2, mode="process")
    bulk.load()
    try:
        first = bulk.predict(datas, progress=True)
        shuffled = bulk.predict([datas[i] for i in perm])
    finally:
        bulk.close()
    np.testing.assert_allclose(first, want, atol=1e-5)
    np.testing.assert_allclose(shuffled, want[perm], atol=1e-5)


def test_undecodable_images_get_the_fallback_and_spare_their_batch(tmp_path, weights):
    prof = _profile(tmp_path, weights, fallback=0.37)
    datas = _images(6)
    bad = [b"\xff\xd8\xff\xe0 not a jpeg at all", b"", datas[2][: len(datas[2]) // 3]]
    mixed = datas[:2] + bad[:2] + datas[2:] + bad[2:]
    bulk = BulkPredictor(prof, ["cpu"], batch_size=4, mode="thread")
    bulk.load()
    try:
        clean = bulk.predict(datas)
        got = bulk.predict(mixed)
    finally:
        bulk.close()
    assert np.isfinite(got).all() and ((got >= 0) & (got <= 1)).all()
    np.testing.assert_allclose(got[[0, 1, 4, 5, 6, 7]], clean, atol=1e-5)
    assert got[2] == pytest.approx(0.37) and got[3] == pytest.approx(0.37)
    # a truncated JPEG may still decode (libjpeg pads it); either way it gets a valid answer
    assert 0.0 <= got[8] <= 1.0


def test_hardware_decoding_is_refused_cleanly_off_the_gpu(tmp_path, weights):
    from natix_miner.imaging import hwjpeg

    assert hwjpeg.available("cpu") is False
    with pytest.raises(ValueError, match="CUDA"):
        hwjpeg.decoder("cpu")
    with pytest.raises(ValueError, match="hw_share"):
        prof = make_profile(tmp_path, experts=[{"name": "fast", "family": "timm", "model": "mobilenetv3_small_050",
                                                "device": "cpu", "options": {"num_classes": 2, "image_size": 64,
                                                                             "decode": "hw", "hw_share": 1.5}}],
                            tiers=[{"name": "fast", "experts": ["fast"], "budget_s": 8}])
        from natix_miner.experts import create_expert

        create_expert(prof.expert("fast"), prof).load("cpu")


def test_benchmark_sections_run_end_to_end_on_the_cpu(tmp_path):
    """``natix-miner bench`` with every section (the axon one through a real axon and dendrites in
    a separate process): numbers come back for each, nothing fell back or came back invalid, and
    the JSON report is written."""
    import json

    from natix_miner.benchmark import run

    out = tmp_path / "bench.json"
    args = argparse.Namespace(profile=None, arch="mobilenetv3_small_050", dtype="float32", compile=False,
                              compile_mode="default", decode="cpu", decode_threads=2, devices="cpu", batch=8,
                              workers=1, n=24, requests=8, concurrency=[1, 4], sections="ceiling,bulk,online,axon",
                              cache_off=True, seed=0, json=str(out), cuda_graphs=False, max_wait_ms=0.0,
                              hw_share=1.0)
    report = run(args)
    res = report["results"]
    assert res["ceiling"]["img_per_s"] > 0
    assert res["bulk_1"]["img_per_s"] > 0 and 0 < res["bulk_1"]["ratio_to_ceiling"]
    assert [r["concurrency"] for r in res["online"]] == [1, 4]
    for r in res["online"]:
        assert r["fallbacks"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert [r["concurrency"] for r in res["axon"]] == [1, 4]
    for r in res["axon"]:
        assert r["invalid"] == 0 and r["client_p50_ms"] >= r["server_p50_ms"] > 0, r
    assert json.loads(out.read_text())["results"]["bulk_1"]["n"] == 24
