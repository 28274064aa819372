"""Open-vocabulary experts (Grounding DINO, OWLv2, SAM 3): tiny real models with locally built
tokenizers, loaded through the profile syntax, text prompts -> detections -> roadwork evidence."""

import numpy as np
import pytest

from natix_miner.experts import create_expert
from natix_miner.experts.detection import DetectorConfigError
from natix_miner.experts.open_vocab import DEFAULT_PROMPTS
from natix_miner.schema import OptionsError
from tests.support.tiny_detectors import decoded, grounding_dino, owlv2, profile_file, sam3, scenes

PROMPTS = {"cone": ["traffic cone"], "barrier": ["construction barrier"], "sign": ["road work sign"],
           "construction_vehicle": ["excavator"], "worker": ["worker in safety vest", "worker"]}

PROFILE = """
name: openvocab-test
experts:
  - name: gdino
    family: grounding_dino
    model: {gdino}
    max_batch: 4
    options:
      prompts:
        cone: [traffic cone]
        barrier: [construction barrier]
        sign: [road work sign]
        construction_vehicle: [excavator]
        worker: [worker in safety vest, worker]
      conf: 0.0
      min_score: 0.0
      max_det: 10
  - name: owl
    family: owlv2
    model: {owl}
    options: {{conf: 0.0, min_score: 0.0, max_det: 10, nms_iou: 0.5}}
  - name: sam3
    family: sam3
    model: {sam3}
    options:
      prompts: {{cone: [traffic cone], worker: [worker in safety vest]}}
      conf: 0.0
      min_score: 0.0
tiers:
  - name: open_vocab
    experts: [gdino, owl, sam3]
"""


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    return profile_file(d / "p.yaml", PROFILE.format(gdino=grounding_dino(d / "gdino"), owl=owlv2(d / "owl"),
                                                     sam3=sam3(d / "sam3")))


@pytest.fixture(scope="module")
def images():
    return decoded(scenes(3, seed=1))


def check_evidence(ev, n, prompts):
    assert len(ev) == n
    for e in ev:
        d = e.detail
        assert 0 < e.probability < 1 and not e.abstain
        assert len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) == len(d["classes"]) > 0
        assert set(d["labels"]) <= {p for ps in prompts.values() for p in ps}
        for label, cls in zip(d["labels"], d["classes"]):
            assert label in prompts[cls]  # each box carries its prompt's class
        b = np.asarray(d["boxes"])
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 224).all() and (b[:, 3] <= 224).all()
        assert d["raw"] == pytest.approx(e.probability, abs=1e-6)  # identity calibration


@pytest.mark.parametrize("name", ["gdino", "owl", "sam3"])
def test_open_vocab_family_runs_prompts_on_a_batch(profile, images, name):
    ex = create_expert(profile.expert(name), profile)
    ex.load("cpu")
    assert ex.memory_bytes() > 0
    prompts = profile.expert(name).options.get("prompts") or DEFAULT_PROMPTS
    assert ex.prompts == [p for ps in prompts.values() for p in ps]
    ev = ex.predict_batch(images)
    check_evidence(ev, 3, prompts)
    again = ex.predict_batch(images)
    for a, b in zip(ev, again):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
        assert a.detail["labels"] == b.detail["labels"]
    single = ex.predict_batch(images[1:2])[0]
    assert single.probability == pytest.approx(ev[1].probability, abs=1e-4)
    assert len(ex.detect(images)[0]) <= int(profile.expert(name).options.get("max_det", 50))


def test_grounding_dino_prompt_spans_follow_the_caption(profile):
    ex = create_expert(profile.expert("gdino"), profile)
    ex.load("cpu")
    tok = ex.processor.tokenizer
    assert ex.caption == "traffic cone. construction barrier. road work sign. excavator. worker in safety vest. worker."
    ids = tok(ex.caption)["input_ids"]
    words = [[tok.convert_ids_to_tokens(int(ids[i])) for i in span] for span in ex.spans]
    assert words == [p.split() for p in ex.prompts]
    # the vocabulary puts "." where Grounding DINO's phrase masks expect it
    assert tok.convert_tokens_to_ids(".") == 1012


def test_to_detections_picks_the_best_prompt_and_cuts(profile):
    ex = create_expert(profile.expert("owl"), profile)
    ex.load("cpu")
    ex.conf, ex.max_det = 0.3, 2
    scores = np.array([[0.1, 0.9, 0, 0, 0], [0.5, 0.2, 0, 0, 0], [0.2, 0.1, 0, 0, 0], [0, 0, 0, 0, 0.4]])
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [-5, 3, 300, 9]], np.float32)
    det = ex.to_detections(scores, boxes, (224, 224))
    assert det.labels == ["construction barrier", "traffic cone"] and det.scores.tolist() == pytest.approx([0.9, 0.5])
    ex.max_det = 5
    det = ex.to_detections(scores, boxes, (224, 224))
    assert det.labels[-1] == "worker in safety vest" and det.boxes[-1].tolist() == [0, 3, 224, 9]  # clipped


def test_open_vocab_option_errors(profile):
    spec = profile.expert("gdino")
    bad = spec.model_copy(update={"options": {"prompts": {"cone": ["traffic. cone"]}}})
    with pytest.raises(DetectorConfigError, match="'.'"):
        create_expert(bad, profile).load("cpu")
    # refused at construction (profile validate), before anything loads
    bad = spec.model_copy(update={"options": {"classes": {"cone": [0]}}})
    with pytest.raises(OptionsError, match="'classes' is not an option of family 'grounding_dino'.*Valid: .*prompts"):
        create_expert(bad, profile)
    bad = spec.model_copy(update={"options": {"prompts": {"cone": ["cone"], "worker": ["cone"]}}})
    with pytest.raises(OptionsError, match=r"options\.prompts: 'cone' appears twice"):
        create_expert(bad, profile)
