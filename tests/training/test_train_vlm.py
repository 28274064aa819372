"""``natix-miner train-vlm``: LoRA on a tiny (random-weight) Qwen2-VL, built locally, on procedural scenes.

One run, interrupted after its first checkpoint and resumed, carries the checks: the answer loss
falls (the six training scenes, level 0, are learnable even by a random model), ``adapter/`` and
``merged/`` are written, the merged checkpoint loads in the ``hf_vlm`` family and gives the
probabilities the trained model gave, and the held-out P(yes) MCC before and after is reported.
Random weights say nothing about accuracy: the MCC figures are printed, not held to a floor.
"""

import json
import math
import os

import numpy as np
import pytest

from natix_miner.training import vlm_lora
from tests.support.vlm_support import spec, tiny_vlm

SETTINGS = dict(steps=10, batch_size=4, lr=2e-3, warmup_steps=0, lora_dropout=0.0, checkpoint_every=5, target="all",
                levels=(0,), hflip=0.0, val_fraction=0.5, options={"max_pixels": 112 * 112}, progress=True)
DATA = "procedural:12:128"  # 6 training scenes (3 roadwork), 6 held out; long side 128 px


class _Stop(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The trained run: interrupted after step 6 (checkpoint at 5), refused without --resume, resumed."""
    base = tiny_vlm("qwen2_vl")
    out = str(tmp_path_factory.mktemp("train-vlm") / "run")
    real = vlm_lora.balanced_batch

    def stop_at_seven(labels, step, batch_size, seed):
        if step == 6:  # before the seventh step: six done, the checkpoint of step 5 on disk
            raise _Stop()
        return real(labels, step, batch_size, seed)

    mp = pytest.MonkeyPatch()
    mp.setattr(vlm_lora, "balanced_batch", stop_at_seven)
    with pytest.raises(_Stop):
        vlm_lora.train_vlm(base, DATA, out, **SETTINGS)
    mp.undo()
    interrupted = __import__("torch").load(os.path.join(out, "last.pt"), weights_only=False)
    with pytest.raises(vlm_lora.VLMTrainingError, match="--resume"):
        vlm_lora.train_vlm(base, DATA, out, **SETTINGS)
    report = vlm_lora.train_vlm(base, DATA, out, resume=True, **SETTINGS)
    return base, out, report, interrupted


def test_resume_continues_from_the_checkpoint(run):
    _, _, report, interrupted = run
    assert interrupted["step"] == 5
    steps = [h["step"] for h in report["history"]]
    assert steps == list(range(1, 11))
    assert report["history"][:5] == interrupted["history"]  # the first five steps were not run again
    assert report["before"] == interrupted["before"]  # "before" was measured once, before any training
    # a finished run resumed again is not trained again (the build command resumes every step)
    again = vlm_lora.train_vlm(run[0], DATA, run[1], resume=True, **SETTINGS)
    assert again["history"] == json.loads(json.dumps(report["history"]))


def test_loss_falls_and_outputs_are_written(run):
    _, out, report, _ = run
    loss = [h["loss"] for h in report["history"]]
    print("answer loss by step:", [round(v, 3) for v in loss])
    print(f"held-out P(yes) MCC before {report['before']['mcc']:.3f}, after {report['after']['mcc']:.3f} "
          f"(n={report['held_out']})")
    assert all(math.isfinite(v) for v in loss)
    assert loss[0] == pytest.approx(math.log(2), abs=0.1)  # random model: P(yes) near 0.5
    assert np.mean(loss[-3:]) < loss[0] - 0.1, loss
    assert report["held_out"] == 6 and report["train"] == 6
    for key in ("before", "after"):
        assert -1.0 <= report[key]["mcc"] <= 1.0 and report[key]["n"] == 6
        assert set(report[key]["per_level"]) == {0}
    assert os.path.isfile(os.path.join(out, "adapter", "adapter_config.json"))
    assert any(f.startswith("adapter_model") for f in os.listdir(os.path.join(out, "adapter")))
    merged = os.path.join(out, "merged")
    # a complete checkpoint: every file of the base (weights, config, processor, tokenizer, template)
    expected = set(os.listdir(run[0])) - {"natix_tiny.json"}
    assert expected <= set(os.listdir(merged)), expected - set(os.listdir(merged))
    assert {"config.json", "model.safetensors", "chat_template.jinja", "tokenizer.json"} <= expected
    saved = json.loads(open(os.path.join(out, "report.json")).read())
    assert saved["after"]["mcc"] == pytest.approx(report["after"]["mcc"])
    import yaml

    [entry] = yaml.safe_load(open(os.path.join(out, "expert.yaml")))
    assert entry["family"] == "hf_vlm" and entry["model"] == os.path.realpath(merged)
    assert entry["options"] == {"max_pixels": 112 * 112}


def test_merged_checkpoint_serves_what_was_trained(run):
    """The merged directory loads in ``hf_vlm`` like a hub checkpoint; its P(yes) on the training
    scenes is the adapted model's (roadwork above none), not the base model's."""
    from natix_miner.experts import create_expert
    from natix_miner.imaging.decode import decode_bytes
    from natix_miner.training.datasets import load_samples, split_samples

    base, out, _, _ = run
    train, _ = split_samples(load_samples(DATA, labelled=True), 0.5, seed=0)
    images = [decode_bytes(s.bytes()) for s in train]
    labels = np.asarray([s.label for s in train])
    probs = {}
    for name, path in (("base", base), ("merged", os.path.join(out, "merged"))):
        e = create_expert(spec("hf_vlm", path, name=name, max_pixels=112 * 112))
        e.load("cpu")
        probs[name] = np.asarray([ev.probability for ev in e.predict_batch(images)])
        assert all(0.0 < p < 1.0 for p in probs[name]), probs[name]
    gap = {k: v[labels == 1].mean() - v[labels == 0].mean() for k, v in probs.items()}
    print("P(yes) roadwork - none on the training scenes:", {k: round(float(v), 3) for k, v in gap.items()})
    assert gap["merged"] > gap["base"] + 0.05
    assert not np.allclose(probs["merged"], probs["base"], atol=1e-3)


def test_operator_mistakes_end_in_one_error_line(tmp_path, capsys):
    from natix_miner.cli import main

    def run_cli(*argv):
        code = main(["train-vlm", *argv])
        text = capsys.readouterr().err
        assert "Traceback" not in text
        # the data loader's progress bar (stderr, carriage returns) is not an error line
        return code, [ln for ln in text.strip().splitlines() if ln.strip() and "img/s" not in ln]

    code, err = run_cli("--model", str(tmp_path), "--data", "procedural:4", "--out", str(tmp_path / "o"),
                        "--options", "{not json")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --options"), err
    code, err = run_cli("--model", str(tmp_path), "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "absent" in err[0], err
    code, err = run_cli("--model", str(tmp_path), "--data", "procedural:4", "--out", str(tmp_path / "o"),
                        "--levels", "0,7")
    assert code == 2 and len(err) == 1 and "levels" in err[0], err
    code, err = run_cli("--model", str(tmp_path), "--data", "procedural:4", "--out", str(tmp_path / "o"),
                        "--options", '{"max_pixel": 100}')
    assert code == 2 and len(err) == 1 and "max_pixel" in err[0] and "max_pixels" in err[0], err
    code, err = run_cli("--model", str(tmp_path), "--data", "procedural:4:64", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and "not loadable as a Qwen-VL checkpoint" in err[0], err


def test_balanced_batches_are_balanced_and_reproducible():
    labels = [1] * 3 + [0] * 9
    a = vlm_lora.balanced_batch(labels, 5, 6, seed=0)
    assert sum(labels[i] for i in a) == 3 and len(a) == 6
    assert a == vlm_lora.balanced_batch(labels, 5, 6, seed=0)
    assert a != vlm_lora.balanced_batch(labels, 6, 6, seed=0)
    with pytest.raises(vlm_lora.VLMTrainingError, match="both classes"):
        vlm_lora.balanced_batch([1, 1], 0, 2, seed=0)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_lora_targets_of_every_qwen_vl_generation(arch):
    """``target: language`` adapts the text decoder only, ``all`` the vision tower too; one backward pass
    of the answer loss reaches every adapter (the trained run above covers Qwen2-VL)."""
    from natix_miner.training.datasets import from_procedural

    scenes = from_procedural(2, seed=0, long_side=96)
    images, labels = [s.image() for s in scenes], [s.label for s in scenes]
    for target in ("language", "all"):
        expert = vlm_lora.load_expert(tiny_vlm(arch), {"max_pixels": 112 * 112}, "cpu", "float32")
        model = vlm_lora._lora(expert, vlm_lora.VLMTrainConfig(model="m", data="d", out="o", target=target))
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all("lora_" in n for n in trained)
        assert any("visual" in n for n in trained) == (target == "all"), sorted(trained)[:4]
        loss, p_yes = vlm_lora.answer_loss(expert, images, labels)
        loss.backward()
        assert math.isfinite(loss.item()) and all(0.0 < p < 1.0 for p in p_yes)
        # LoRA's B starts at zero, so A gets no gradient on the first pass; every B does
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)
