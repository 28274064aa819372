"""The procedural scene generator: seeded, labelled correctly, varied, and not separable by colour."""

import numpy as np
import pytest

from natix_miner.synth import scenes as S

SMALL = (384, 216)


def _orange_fraction(img) -> float:
    a = np.asarray(img).astype(np.int16)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return float(((r > 150) & (r - g > 50) & (r - b > 90)).mean())


def test_same_seed_same_image_other_seed_other_image():
    a = S.render_scene(1, 42, size=SMALL)
    b = S.render_scene(1, 42, size=SMALL)
    c = S.render_scene(1, 43, size=SMALL)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.description == b.description
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_sizes_real_and_synthetic():
    real = S.render_scene(0, 1)
    assert real.image.size in S.REAL_SIZES and real.image.mode == "RGB"
    syn = S.render_scene(0, 1, synthetic=True)
    assert syn.image.size == S.SYNTHETIC_SIZE and syn.params["synthetic"]


def test_labels_match_the_objects_drawn():
    for seed in range(12):
        pos = S.render_scene(1, seed, size=SMALL)
        rw = pos.roadwork_objects
        assert rw, pos.description
        W, H = SMALL
        visible = sum(max(0, min(W, o.box[2]) - max(0, o.box[0])) * max(0, min(H, o.box[3]) - max(0, o.box[1]))
                      for o in rw)
        assert visible / (W * H) >= S.HARD_ROADWORK_AREA * 0.99
        assert "roadwork:" in pos.description
        neg = S.render_scene(0, seed, size=SMALL)
        assert not neg.roadwork_objects and neg.description.endswith("no roadwork")


def test_variety_of_conditions_layouts_and_objects():
    scenes = [S.render_scene(1, 100 + i, size=SMALL) for i in range(30)]
    assert len({s.params["time"] for s in scenes}) >= 3
    assert len({s.params["weather"] for s in scenes}) >= 3
    assert len({s.params["environment"] for s in scenes}) >= 3
    assert len({s.params["layout"] for s in scenes}) >= 4
    kinds = {o.kind for s in scenes for o in s.roadwork_objects}
    for k in ("worker", "cone"):
        assert k in kinds
    assert len(kinds & {"excavator", "dump_truck", "roller", "arrow_board"}) >= 2
    assert len(kinds & {"barricade", "drum", "plastic_barrier", "fence"}) >= 2
    assert any(k.startswith("sign_rw") or k == "sign_detour" for k in kinds)


def test_clear_roads_carry_orange_and_red_confounders_and_colour_is_a_weak_cue():
    from sklearn.metrics import roc_auc_score

    labels, orange = [], []
    for i in range(60):
        sc = S.render_scene(i % 2, 900 + i, size=SMALL, synthetic=i % 4 >= 2)
        labels.append(sc.label)
        orange.append(_orange_fraction(sc.image))
    labels, orange = np.array(labels), np.array(orange)
    assert (orange[labels == 0] > 0.0005).mean() >= 0.2      # clear roads often have orange/red things
    auc = roc_auc_score(labels, orange)
    assert auc < 0.85, f"orange pixel fraction separates the classes too well (AUC {auc:.2f})"


def test_generator_stream_is_seeded_and_balanced():
    g1, g2 = S.SceneGenerator(seed=5, real_sizes=[SMALL]), S.SceneGenerator(seed=5, real_sizes=[SMALL])
    a = [g1.sample() for _ in range(6)]
    b = [g2.sample() for _ in range(6)]
    assert [s.label for s in a] == [s.label for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))


def test_bad_label_is_rejected():
    with pytest.raises(ValueError):
        S.render_scene(2, 0)
