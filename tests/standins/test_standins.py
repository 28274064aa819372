"""Stand-in weights (issue 13 items 1-2): the production profiles load and answer from stand-ins.

The tiny stand-ins of h100x2 and h100x1 are built once per session (real architectures, shrunk);
every expert must load from them on the CPU, and with ``all_tiers`` one validator-sized JPEG gets an
answer from every expert of every tier within the profile's deadline. A local miner serving h100x2
answers the mock validator. At ``full`` scale the parameter counts of the named models match their
published sizes, counted on the meta device.
"""

from tests.support.paths import REPO_ROOT
import asyncio
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from natix_miner.config import ProfileError, load_profile

ROOT = REPO_ROOT


# the ``stand_ins`` fixture (tiny stand-ins per profile, built once per session) is in conftest.py


def validator_jpeg(seed: int = 0) -> bytes:
    """A 224x224 JPEG as validators send it."""
    import io

    from PIL import Image

    rgb = (np.random.default_rng(seed).random((224, 224, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run_all_tiers(profile):
    from natix_miner.engine import Engine

    async def go():
        engine = Engine(profile)
        await engine.start()
        try:
            return dict(engine.load_status), dict(engine.load_errors), await engine.predict(validator_jpeg(),
                                                                                             all_tiers=True)
        finally:
            await engine.close()

    return asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["h100x2", "h100x1"])
def test_every_expert_loads_from_its_stand_in_and_answers_in_every_tier(stand_ins, name):
    profile = load_profile(name, stand_ins=stand_ins(name), device="cpu")
    assert all(e.replica_devices == ["cpu"] * len(e.replica_devices) for e in profile.experts)
    status, errors, res = run_all_tiers(profile)
    assert errors == {} and set(status.values()) == {"loaded"}, errors
    assert res.tiers_run == [t.name for t in profile.tiers]
    every = [n for t in profile.tiers for n in t.experts]
    assert sorted(res.evidence) == sorted(every), res.skipped
    for name_, ev in res.evidence.items():
        assert math.isfinite(ev.probability) and 0.0 < ev.probability < 1.0, name_
    assert not res.fallback and 0.0 <= res.probability <= 1.0
    assert res.timings["total"] < profile.deadline_s


def test_the_stand_in_layouts_are_the_families_own(stand_ins):
    root = stand_ins("h100x2")
    manifest = json.loads(open(os.path.join(root, "stand-ins.json")).read())
    e = manifest["experts"]
    assert manifest["profile"] == "h100x2" and manifest["scale"] == "tiny"
    assert e["convnextv2"]["overrides"] == {"model": "convnextv2_atto",
                                            "options": {"weights": "convnextv2/model.safetensors"}}
    assert e["dinov2_head"]["overrides"]["options"]["head"] == "dinov2_head/head.npz"
    assert e["yolo11"]["overrides"]["model"] == "yolo11/best.pt" and e["rfdetr"]["overrides"]["model"].endswith(".pth")
    assert "packaged" in e["ocr"] and e["ocr"]["overrides"] == {}
    for name in ("natix_vit", "grounding_dino", "owlv2", "sam3", "siglip2", "clip_l14", "depth_yolo", "qwen3_vl_32b",
                 "internvl3_8b"):
        d = os.path.join(root, name)
        assert os.path.isfile(os.path.join(d, "config.json")) and os.path.isfile(os.path.join(d, "model.safetensors"))
    for name in ("grounding_dino", "owlv2", "sam3", "siglip2", "clip_l14", "qwen3_vl_32b", "internvl3_8b"):
        assert any(f.startswith("tokenizer") for f in os.listdir(os.path.join(root, name))), name
    # the depth expert's own detector is the profile's yolo11, which now loads its stand-in
    prof = load_profile("h100x2", stand_ins=root)
    assert prof.expert("yolo11").model == os.path.join(os.path.realpath(root), "yolo11", "best.pt")
    assert prof.expert("depth_yolo").options["detector"] == "yolo11"


def test_device_cpu_maps_every_replica_and_runs_vllm_through_transformers(monkeypatch):
    raw = load_profile("h100x2", stand_ins=False, device=False)
    assert raw.expert("convnextv2").replica_devices == ["cuda:0", "cuda:1"]
    monkeypatch.setenv("NATIX_DEVICE", "cpu")  # the environment is how commands and child processes apply it
    prof = load_profile("h100x2")
    assert prof.expert("convnextv2").replica_devices == ["cpu", "cpu"]
    qwen = prof.expert("qwen3_vl_32b")
    assert qwen.family == "hf_vlm" and "engine" not in qwen.options and qwen.options["max_pixels"] == 200704
    assert load_profile("h100x2", device=False).expert("qwen3_vl_32b").family == "vllm"


def test_stand_ins_of_another_profile_or_no_manifest_are_refused_with_the_fix(stand_ins, tmp_path):
    with pytest.raises(ProfileError, match=r"no stand-in for qwen3_vl_8b .*`natix-miner models stand-in h100x1 --out"):
        load_profile("h100x1", stand_ins=stand_ins("h100x2"))
    manifest = json.loads(open(os.path.join(stand_ins("h100x2"), "stand-ins.json")).read())
    manifest["experts"]["convnextv2"]["stands_in_for"] = "convnextv2_base"  # built when the profile said so
    (tmp_path / "stand-ins.json").write_text(json.dumps(manifest))
    with pytest.raises(ProfileError, match=r"convnextv2 stands in for timm 'convnextv2_base', the profile has timm "
                                           r"'convnextv2_large'; rebuild with `natix-miner models stand-in h100x2"):
        load_profile("h100x2", stand_ins=str(tmp_path))
    (tmp_path / "stand-ins.json").unlink()
    with pytest.raises(ProfileError, match="no stand-ins.json in .*models stand-in PROFILE"):
        load_profile("h100x2", stand_ins=str(tmp_path))


def test_run_refuses_stand_ins_on_chain(stand_ins, monkeypatch):
    from natix_miner.miner.args import build_config
    from natix_miner.miner.errors import ConfigError

    monkeypatch.setenv("NATIX_STAND_INS", "")  # restored (removed) after the test: build_config exports the flags
    monkeypatch.setenv("NATIX_DEVICE", "")
    with pytest.raises(ConfigError, match="random.*--local"):
        build_config(["--profile", "h100x2", "--stand-ins", stand_ins("h100x2"), "--device", "cpu"], env={})
    cfg = build_config(["--local", "--profile", "h100x2", "--stand-ins", stand_ins("h100x2"), "--device", "cpu"],
                       env={})
    assert cfg.local and os.environ["NATIX_DEVICE"] == "cpu"


def test_cli_builds_stand_ins_and_predict_shows_every_tier(tmp_path, capsys, monkeypatch):
    """The commands of the README on the small demo profile: stand-in, then predict --all-tiers --json."""
    from natix_miner.cli import main

    for var in ("NATIX_STAND_INS", "NATIX_DEVICE"):  # the flags export them; restored after the test
        monkeypatch.setenv(var, "")
    out = tmp_path / "si"
    assert main(["models", "stand-in", "demo-cpu", "--scale", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "effnet_lite0" in printed and "wrote" in printed and (out / "stand-ins.json").is_file()
    img = tmp_path / "x.jpg"
    img.write_bytes(validator_jpeg(1))
    assert main(["predict", str(img), "--profile", "demo-cpu", "--stand-ins", str(out), "--device", "cpu",
                 "--all-tiers", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    prof = load_profile("demo-cpu", stand_ins=False, device=False)
    assert rec["tiers"] == [t.name for t in prof.tiers]
    assert {t: set(v) for t, v in rec["per_tier"].items()} == {t.name: set(t.experts) for t in prof.tiers}
    assert all(isinstance(p_, float) for v in rec["per_tier"].values() for p_ in v.values()), rec["per_tier"]
    assert main(["predict", str(img), "--stand-ins", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no stand-ins.json") and "models stand-in" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_local_miner_on_h100x2_stand_ins_answers_the_mock_validator(stand_ins, tmp_path):
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("NATIX_STAND_INS", "NATIX_DEVICE")}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "mock_validator.py"), "--spawn-miner",
                        "--profile", "h100x2", "--stand-ins", stand_ins("h100x2"), "--device", "cpu", "--n", "20",
                        "--concurrency", "4", "--json", str(out), "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["n"] == 20 and rep["invalid"] == 0 and rep["answered"] + rep["fallback"] == 20, rep
    assert rep["miners"][0]["name"] == "h100x2"


# published sizes (model cards / papers), millions of parameters; ultralytics publishes fused counts
PUBLISHED = {
    ("h100x2", "convnextv2"): 198.0,     # ConvNeXt V2-L (timm / paper)
    ("h100x2", "eva02"): 86.0,           # EVA-02 B/14
    ("h100x2", "dinov2_head"): 1100.0,   # DINOv2 ViT-g/14 ("1.1 B")
    ("h100x2", "yolo11"): 56.9,          # YOLO11x
    ("h100x2", "clip_l14"): 428.0,       # CLIP ViT-L/14-336
    ("h100x2", "depth_yolo"): 335.3,     # Depth Anything V2 Large
    ("h100x2", "sam3"): 840.0,           # SAM 3
    ("h100x2", "qwen3_vl_32b"): 33400.0,  # Qwen3-VL-32B ("33.4 B")
    ("h100x1", "qwen3_vl_8b"): 8770.0,   # Qwen3-VL-8B ("8.77 B")
}


@pytest.mark.parametrize("key", sorted(PUBLISHED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_full_scale_has_the_published_parameter_count(key):
    from natix_miner.standins.build import build_model, n_params

    spec = load_profile(key[0], stand_ins=False, device=False).expert(key[1])
    model = build_model(spec, "full", device="meta")
    if spec.family == "ultralytics":
        model.fuse(verbose=False)
    n = n_params(model) / 1e6
    assert abs(n / PUBLISHED[key] - 1) < 0.05, (key, n)
    if spec.family != "ultralytics":
        assert all(p.is_meta for p in model.parameters())  # nothing allocated


def test_all_tiers_runs_past_a_confident_answer_and_waits_for_slow_experts(tmp_path):
    """Engine.predict(all_tiers=True): the same cascade, every tier, each tier waiting for all its experts
    up to the deadline less the later tiers' min_budget_s; normal predict stops and times out as before."""
    from natix_miner.engine import Engine
    from tests.support.engine_experts import grey_png, make_profile

    prof = make_profile(tmp_path, deadline_s=5.0, experts=[
        {"name": "bright", "family": "engine_test_brightness"},
        {"name": "slow", "family": "engine_test_slow", "options": {"seconds": 0.6}},
        {"name": "last", "family": "engine_test_brightness", "options": {"invert": True}}],
        tiers=[{"name": "t0", "experts": ["bright"]},
               {"name": "t1", "experts": ["slow"], "budget_s": 0.2},
               {"name": "t2", "experts": ["last"], "min_budget_s": 0.5}])
    image = grey_png(250)  # P = 0.98: confident after the first tier

    async def go():
        async with Engine(prof) as engine:
            normal = await engine.predict(image)
            full = await engine.predict(image, all_tiers=True)
            again = await engine.predict(image)
            return normal, full, again

    normal, full, again = asyncio.run(go())
    assert normal.tiers_run == ["t0"] and set(normal.evidence) == {"bright"}
    assert full.tiers_run == ["t0", "t1", "t2"] and set(full.evidence) == {"bright", "slow", "last"}
    assert not full.cached and full.timings["total"] < 5.0
    assert full.evidence["slow"].probability == pytest.approx(250 / 255, abs=1e-3)  # waited past budget_s 0.2
    assert again.cached and again.tiers_run == ["t0"]  # the full run did not replace the cached answer


@pytest.mark.slow
def test_full_scale_stand_ins_are_written_and_load_through_their_families(tmp_path):
    """Two 86 M experts of h100x2 at their real size: written in the expert's precision (float16 /
    bfloat16), loaded by their families on the CPU through stand-ins.json, answering."""
    import yaml

    from natix_miner.standins.build import build_profile

    h = load_profile("h100x2", stand_ins=False, device=False)
    experts = [h.expert("natix_vit").model_dump(exclude_none=True), h.expert("eva02").model_dump(exclude_none=True)]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"name": "two", "experts": experts,
                                    "tiers": [{"name": "fast", "experts": ["natix_vit", "eva02"], "budget_s": 5.0}]}))
    out = tmp_path / "si"
    build_profile(load_profile(path, stand_ins=False, device=False), "full", out)
    manifest = json.loads((out / "stand-ins.json").read_text())
    assert manifest["scale"] == "full"
    assert abs(manifest["experts"]["natix_vit"]["params"] / 85.8e6 - 1) < 0.05
    assert manifest["experts"]["eva02"]["overrides"]["model"] == "eva02_base_patch14_224"
    from safetensors import safe_open

    with safe_open(str(out / "eva02" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    status, errors, res = run_all_tiers(load_profile(path, stand_ins=str(out), device="cpu"))
    assert errors == {} and set(res.evidence) == {"natix_vit", "eva02"}
    assert all(0.0 < ev.probability < 1.0 for ev in res.evidence.values())


def test_full_scale_size_is_estimated_and_a_small_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import collections

    from natix_miner.standins import StandInError, build

    prof = load_profile("h100x2", stand_ins=False, device=False)
    need = build.estimate_bytes(prof, "full")
    assert 85e9 < need < 105e9  # 47 B parameters, nearly all in half precision
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(build.shutil, "disk_usage", lambda path: usage(200e9, 199.99e9, 0.01e9))
    demo = load_profile("demo-cpu", stand_ins=False, device=False)  # 31 MB: EfficientNet-Lite0 + its CenterNet, fp32
    with pytest.raises(StandInError, match=r"need about 31 MB, .* has 10 MB free; choose another --out"):
        build.build_profile(demo, "full", tmp_path / "si")
    assert list((tmp_path / "si").iterdir()) == []
