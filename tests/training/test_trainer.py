"""Training: the validator's augmentation, checkpoints, exact resume, export the engine can load."""

from tests.support.paths import REPO_ROOT
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from natix_miner.cli import main as cli
from natix_miner.training import datasets as D
from natix_miner.training.trainer import TrainConfig, TrainingError, lr_at, train

ROOT = REPO_ROOT


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one intra-op thread is faster and steadier
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def scenes():
    return D.from_procedural(20, seed=5, long_side=160)


def _cfg(out, **kw):
    base = dict(out=str(out), model="test_efficientnet", image_size=48, epochs=2, batch_size=8, lr=2e-3,
                warmup_steps=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_and_class_weights():
    from natix_miner.training.trainer import class_weights

    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.01)
    assert class_weights([1, 1, 1, 0]) == pytest.approx([2.0, 2 / 3])
    with pytest.raises(TrainingError, match="both classes"):
        class_weights([1, 1])


def test_training_views_are_the_validators_challenges(scenes):
    """Each level's training view is exactly what augment() + JPEG 75 produce for that draw."""
    import io

    from PIL import Image

    from natix_miner.synth.augment import augment
    from natix_miner.training.trainer import challenge_view

    for level in range(4):
        v = challenge_view(scenes[0], np.random.default_rng(level), level)
        a = augment(scenes[0].image(), np.random.default_rng(level), level=level)
        ref = Image.open(io.BytesIO(a.jpeg())).convert("RGB")
        assert v.size == (224, 224) and np.array_equal(np.asarray(v), np.asarray(ref))


def test_resume_continues_exactly_where_an_interruption_stopped(tmp_path, scenes):
    train_s, val_s = scenes[:14], scenes[14:]
    full = train(_cfg(tmp_path / "full", epochs=3), train_s, val_s)

    def stop_after_first(epoch, rec):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "cut", epochs=3), train_s, val_s, on_epoch_end=stop_after_first)
    with pytest.raises(TrainingError, match="resume"):
        train(_cfg(tmp_path / "cut", epochs=3), train_s, val_s)  # never silently overwrite a run
    resumed = train(_cfg(tmp_path / "cut", epochs=3), train_s, val_s, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(full["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"]["mcc"] == pytest.approx(b["val"]["mcc"], abs=1e-9)

    import torch

    w_full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    w_cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    for k in w_full:
        assert torch.allclose(w_full[k].float(), w_cut[k].float(), atol=1e-5), k
    for f in ("best.pth", "expert.yaml", "history.json", "last.pt"):
        assert (tmp_path / "cut" / f).exists()
    hist = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert hist["best_epoch"] == resumed["best_epoch"]
    assert set(hist["history"][0]["val"]["per_level"]) == {"0", "1", "2"}  # 3 images a label: levels 0-2


def _write_folder(root, samples):
    for i, s in enumerate(samples):
        d = root / ("roadwork" if s.label else "none")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.jpg").write_bytes(s.data)


def test_cli_train_killed_mid_run_resumes_from_the_next_epoch(tmp_path, scenes):
    data = tmp_path / "data"
    _write_folder(data, scenes)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--arch", "test_efficientnet", "--image-size", "48",
            "--epochs", "4", "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "2", "--val-fraction", "0.3",
            "--threads", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "natix_miner.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        hist = out / "history.json"
        while time.time() < deadline and proc.poll() is None:
            if hist.exists():
                try:
                    done = len(json.loads(hist.read_text())["history"])
                except ValueError:
                    done = 0
                if done >= 1:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)  # power loss: no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    import torch

    done = torch.load(out / "last.pt", weights_only=False)["epoch"] + 1
    assert 1 <= done < 4
    assert cli(args) == 1  # exists: refuses without --resume
    rc = cli(args + ["--resume"])
    assert rc == 0
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == [1, 2, 3, 4]
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 3


def test_exported_timm_expert_answers_in_the_engine_like_in_training(tmp_path, scenes):
    import yaml

    from natix_miner.config import load_profile
    from natix_miner.engine import Engine
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.training.evaluate import make_challenges
    from natix_miner.training.trainer import Classifier, _prepare

    res = train(_cfg(tmp_path / "run", epochs=1, name="tiny"), scenes[:14], scenes[14:])
    entry = yaml.safe_load((tmp_path / "run" / "expert.yaml").read_text())[0]
    assert entry == res["expert"] and entry["name"] == "tiny" and entry["options"]["image_size"] == 48
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"name": "p", "experts": [dict(entry, device="cpu")],
                                    "tiers": [{"name": "fast", "experts": ["tiny"], "budget_s": 5.0}]}))
    ch = make_challenges(scenes[14:], seed=1, progress=False)

    async def run():
        async with Engine(load_profile(prof)) as eng:
            return [await eng.predict(c.jpeg) for c in ch]

    got = [r.probability for r in asyncio.run(run())]
    import torch

    clf = Classifier(_cfg(tmp_path / "x"))
    clf.module.load_state_dict(torch.load(tmp_path / "run" / "best.pth", weights_only=True))
    clf.module.eval()
    x = torch.from_numpy(np.stack([_prepare(decode_bytes(c.jpeg).pil(), 48, clf.mean, clf.std) for c in ch]))
    with torch.inference_mode():
        want = torch.softmax(clf.logits(x), 1)[:, 1].numpy()
    assert np.allclose(got, np.clip(want, 1e-4, 1 - 1e-4), atol=1e-4)


def test_transformers_classifier_trains_and_loads_as_hf_classifier(tmp_path, scenes):
    import yaml
    from transformers import ViTConfig, ViTForImageClassification

    src = tmp_path / "vit"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64, num_labels=2)).save_pretrained(src)
    res = train(_cfg(tmp_path / "run", family="transformers", model=str(src), image_size=32, epochs=1),
                scenes[:14], scenes[14:])
    entry = res["expert"]
    assert entry["family"] == "hf_classifier" and (tmp_path / "run" / "best" / "config.json").exists()
    cfg = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "None", "1": "Roadwork"}
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump({"name": "p", "experts": [dict(entry, device="cpu")],
                                    "tiers": [{"name": "fast", "experts": [entry["name"]], "budget_s": 5.0}]}))
    from natix_miner.config import load_profile
    from natix_miner.engine import Engine

    async def run():
        async with Engine(load_profile(prof)) as eng:
            return await eng.predict(scenes[0].data)

    r = asyncio.run(run())
    assert not r.fallback and 0.0 < r.probability < 1.0 and entry["name"] in r.evidence
