"""The pipeline on a real (tiny) trained expert: evaluate, calibrate a skewed profile, hard examples,
distillation. Everything goes through the `natix-miner` command and the real engine."""

import csv
import json

import pytest
import yaml

from natix_miner.cli import main as cli
from natix_miner.config import load_profile
from natix_miner.training import datasets as D
from natix_miner.training.trainer import TrainConfig, train


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _folder(root, samples, labelled=True):
    """roadwork/ and none/ (a synthetic/ sub-folder marks the synthetic-style scenes), or flat."""
    for i, s in enumerate(samples):
        d = root / ("roadwork" if s.label else "none") if labelled else root
        if labelled and s.source == "synthetic":
            d = d / "synthetic"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.jpg").write_bytes(s.data)
    return root


def easy_images(n, seed):
    """Simple labelled road pictures: orange cones on the road for roadwork, red / blue / white cars
    in both classes; every other pair marked "synthetic". Easy enough for a tiny model to learn in
    seconds, so these tests exercise the pipeline, not the model's capacity."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        label = 1 - i % 2
        rng = np.random.default_rng([seed, i])
        w, h = 256, 192
        im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(90, 200, 3)))
        d = ImageDraw.Draw(im)
        d.rectangle([0, h // 2, w, h], fill=tuple(int(v) for v in rng.integers(40, 110, 3)))
        cx = int(rng.integers(100, 156))
        d.polygon([(0, h), (w, h), (cx + 20, h // 2), (cx - 20, h // 2)], fill=(70, 70, 72))
        for _ in range(int(rng.integers(0, 4))):
            x, y = int(rng.integers(20, 220)), int(rng.integers(110, 170))
            colour = [(200, 30, 30), (30, 60, 200), (230, 230, 230)][int(rng.integers(0, 3))]
            d.rectangle([x, y, x + 30, y + 16], fill=colour)
        if label:
            for _ in range(int(rng.integers(3, 7))):
                x, y, s = int(rng.integers(30, 226)), int(rng.integers(115, 185)), int(rng.integers(10, 22))
                d.polygon([(x, y - 2 * s), (x - s, y), (x + s, y)], fill=(255, 110, 10))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        out.append(D.Sample(key=f"easy:{seed}:{i}", label=label, data=buf.getvalue(),
                            source="synthetic" if i % 4 >= 2 else "real"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny timm expert (GroupNorm: no batch statistics to settle) trained on simple road pictures,
    profiles around it, held-out data."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pipeline")
    res = train(TrainConfig(out=str(tmp / "run"), model="test_efficientnet_gn", image_size=64, epochs=4,
                            batch_size=16, lr=3e-3, warmup_steps=5, name="tiny", seed=0),
                easy_images(64, seed=1), easy_images(32, seed=2))
    assert res["best"]["mcc"] > 0.5, res["best"]  # it learned
    expert = dict(res["expert"], device="cpu")
    tiers = [{"name": "fast", "experts": ["tiny"], "budget_s": 5.0}]
    plain = {"name": "tiny", "experts": [expert], "tiers": tiers}
    skewed = {"name": "tiny-skewed", "experts": [expert], "tiers": tiers,
              "consensus": {"bias": 3.0}}  # a model that says "roadwork" far too easily
    two = {"name": "two", "experts": [expert, {"name": "raw", "family": "timm", "model": "test_efficientnet_gn",
                                                "device": "cpu", "options": {"image_size": 64}}],
           "tiers": tiers + [{"name": "heavy", "experts": ["raw"], "budget_s": 5.0}],
           "escalation": {"low": 0.3, "high": 0.7}}
    paths = {}
    for doc in (plain, skewed, two):
        p = tmp / f"{doc['name']}.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
        paths[doc["name"]] = p
    held = easy_images(24, seed=3)
    return {"tmp": tmp, "profiles": paths, "data": _folder(tmp / "held", held), "held": held}


def test_evaluate_two_profiles_side_by_side(world, capsys):
    out = world["tmp"] / "eval"
    rc = cli(["evaluate", "--profile", str(world["profiles"]["tiny"]), "--compare",
              str(world["profiles"]["tiny-skewed"]), "--data", str(world["data"]), "--json", str(out / "e.json"),
              "--plots", str(out), "--quiet", "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tiny-skewed" in text and "L0 MCC" in text
    rep = json.loads((out / "e.json").read_text())
    assert rep["n"] == 24 and rep["labels"] == {"roadwork": 12, "none": 12, "unlabelled": 0}
    a, b = rep["profiles"]["tiny"], rep["profiles"]["tiny-skewed"]
    for r in (a, b):
        cm = r["overall"]["confusion"]
        assert sum(cm.values()) == 24
        assert set(r["per_level"]) == {"0", "1", "2", "3"}
        assert all(v["n"] == 6 and v["positives"] == 3 for v in r["per_level"].values())
        assert set(r["per_source"]) == {"real", "synthetic"}
        assert r["exits"] == {"fast": 24} and r["fallbacks"] == {}
        o = r["overall"]
        assert o["reward_proxy"] == pytest.approx((0.5 * max(0, o["mcc"]) + 0.5 * o["accuracy"]) ** 3)
    # the skew shows: more "roadwork" answers, the best threshold far above 0.5
    assert b["overall"]["confusion"]["fp"] >= a["overall"]["confusion"]["fp"]
    assert b["overall"]["best_threshold"] > 0.8
    assert "tiny vs tiny-skewed" in rep["comparison"]
    for name in ("reliability.png", "pr_curve.png", "mcc_threshold.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibration_moves_a_skewed_profiles_best_threshold_to_half(world, tmp_path, capsys):
    src = world["profiles"]["tiny-skewed"]
    prof = tmp_path / "skewed.yaml"
    prof.write_text(src.read_text())
    data = str(world["data"])
    assert cli(["calibrate", "--profile", str(prof), "--data", data, "--method", "temperature",
                "--holdout", "0", "--all-levels", "--quiet", "--json", str(tmp_path / "c.json")]) == 0
    fitted = json.loads((tmp_path / "skewed.consensus.json").read_text())
    m = fitted["metrics"]
    assert m["before"]["best_threshold"] > 0.8
    se = (1 - m["after"]["mcc_at_best_threshold"] ** 2) / (96 - 1) ** 0.5
    assert m["after"]["mcc"] >= m["after"]["mcc_at_best_threshold"] - se  # 0.5 is now (within noise) the best
    assert abs(m["after"]["best_threshold"] - 0.5) < abs(m["before"]["best_threshold"] - 0.5)
    assert m["after"]["mcc"] >= m["before"]["mcc"]
    assert fitted["n"] == 96 and fitted["method"] == "temperature" and fitted["data"] == data
    assert fitted["bias"] < 3.0  # the skew is taken back
    loaded = load_profile(prof)  # the loader merges the file beside the profile
    assert loaded.consensus.bias == pytest.approx(fitted["bias"])
    assert loaded.consensus.temperature == pytest.approx(fitted["temperature"])
    # the real engine, with the calibrated profile, now answers with 0.5 as the right threshold
    assert cli(["evaluate", "--profile", str(prof), "--data", data, "--all-levels", "--quiet",
                "--json", str(tmp_path / "after.json")]) == 0
    after = json.loads((tmp_path / "after.json").read_text())["profiles"]["tiny-skewed"]["overall"]
    assert after["mcc"] >= after["mcc_at_best_threshold"] - se
    assert after["mcc"] == pytest.approx(m["after"]["mcc"], abs=0.05)


def test_consensus_weights_fitted_per_tier(world, tmp_path):
    prof = tmp_path / "two.yaml"
    prof.write_text(world["profiles"]["two"].read_text())
    assert cli(["calibrate", "--profile", str(prof), "--data", str(world["data"]), "--quiet",
                "--holdout", "0.25", "--dry-run"]) == 0
    assert not (tmp_path / "two.consensus.json").exists()  # dry run
    assert cli(["calibrate", "--profile", str(prof), "--data", str(world["data"]), "--quiet"]) == 0
    fitted = json.loads((tmp_path / "two.consensus.json").read_text())
    assert fitted["normalize"] is False and set(fitted["weights"]) == {"tiny", "raw"}
    assert set(fitted["stages"]) == {"fast", "heavy"} and set(fitted["stages"]["fast"]["weights"]) == {"tiny"}
    assert fitted["weights"]["tiny"] > 0 and fitted["experts"] == ["tiny", "raw"]
    assert fitted["metrics"]["evaluated_on"] == "holdout" and fitted["metrics"]["n_eval"] == 6
    prof_loaded = load_profile(prof)
    assert prof_loaded.consensus.stages["fast"].weights["tiny"] == pytest.approx(fitted["stages"]["fast"]["weights"]["tiny"])


def test_hard_examples_export(world, tmp_path, capsys):
    out = tmp_path / "hard"
    assert cli(["hard-examples", "--profile", str(world["profiles"]["two"]), "--data", str(world["data"]),
                "--top", "6", "--out", str(out), "--quiet"]) == 0
    assert "fiftyone not installed" in capsys.readouterr().out
    with open(out / "hard_examples.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    hard = [float(r["hardness"]) for r in rows]
    assert hard == sorted(hard, reverse=True)
    for r in rows:
        assert float(r["hardness"]) == pytest.approx(float(r["uncertainty"]) + float(r["disagreement"])
                                                     + float(r["error"]), abs=1e-5)
        assert abs(float(r["error"]) - abs(float(r["probability"]) - int(r["label"]))) < 1e-5
        assert r["p_tiny"] != "" and r["p_raw"] != ""
        assert (out / "images" / r["file"].split("/")[-1]).exists()
    # the hardest of all 24 were exported: none left out is harder than the last one kept
    assert len(list((out / "images").iterdir())) == 6


def test_distill_labels_unlabelled_images_and_trains_a_student(world, tmp_path, capsys):
    unlabelled = _folder(tmp_path / "u", world["held"], labelled=False)
    out = tmp_path / "distilled"
    rc = cli(["distill", "--teacher", str(world["profiles"]["tiny"]), "--data", str(unlabelled), "--out", str(out),
              "--low", "0.45", "--high", "0.55", "--quiet", "--train", str(tmp_path / "student"),
              "--arch", "test_efficientnet", "--image-size", "48", "--epochs", "1", "--batch-size", "8",
              "--val-fraction", "0.25", "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {int(r["label"]) for r in rows} == {0, 1}
    for r in rows:
        p = float(r["teacher_p"])
        assert (p >= 0.55) if int(r["label"]) == 1 else (p <= 0.45)
        assert (out / r["path"]).exists() and r["path"].startswith("roadwork/" if int(r["label"]) else "none/")
    assert (tmp_path / "student" / "best.pth").exists() and (tmp_path / "student" / "expert.yaml").exists()


def test_evaluate_on_procedural_scenes(world, tmp_path):
    out = tmp_path / "p.json"
    assert cli(["evaluate", "--profile", str(world["profiles"]["tiny"]), "--data", "procedural:8:160",
                "--json", str(out), "--quiet"]) == 0
    rep = json.loads(out.read_text())
    r = rep["profiles"]["tiny"]
    assert rep["n"] == 8 and rep["labels"]["roadwork"] == 4
    assert set(r["per_source"]) == {"real", "synthetic"} and set(r["per_level"]) == {"0", "1", "2", "3"}
