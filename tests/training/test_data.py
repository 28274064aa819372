"""Data: the NATIX parquet schema through `data pull`, loaders, and `data validate`'s findings."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from natix_miner.cli import main as cli
from natix_miner.training import datasets as D
from natix_miner.training.hub import DatasetError, download


@pytest.fixture(scope="module")
def scene_images():
    """Eight distinct small procedural scenes, JPEG bytes, labels alternating 1/0."""
    return [(s.data, s.label) for s in D.from_procedural(8, seed=11, long_side=256)]


def _natix_parquet(path, rows, struct=True):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if struct:
        img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        images = [{"bytes": b, "path": f"{i}.jpg"} for i, (b, _) in enumerate(rows)]
    else:
        img_type = pa.binary()
        images = [b for b, _ in rows]
    table = pa.table({
        "image": pa.array(images, type=img_type),
        "label": pa.array([lab for _, lab in rows], type=pa.int64()),
        "scene_description": pa.array([f"scene {i}" for i in range(len(rows))]),
    })
    pq.write_table(table, path, row_group_size=3)
    return path


def test_pull_ingests_a_local_copy_through_the_same_path(tmp_path, scene_images, capsys):
    src = tmp_path / "mirror" / "data"
    src.mkdir(parents=True)
    _natix_parquet(src / "train-00000-of-00002.parquet", scene_images[:5])
    _natix_parquet(src / "train-00001-of-00002.parquet", scene_images[5:], struct=False)
    out = tmp_path / "roadwork"
    assert cli(["data", "pull", "--out", str(out), "--from", str(tmp_path / "mirror")]) == 0
    assert "8 rows in 2 file(s)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "natix-network-org/roadwork"
    assert manifest["rows"] == 8 and manifest["labels"] == {"1": 4, "0": 4}
    assert {f["image_type"] for f in manifest["files"]} == {"struct", "bytes"}
    assert all((out / f["file"]).exists() and len(f["sha256"]) == 64 for f in manifest["files"])

    samples = D.load_samples(out)
    assert len(samples) == 8
    assert sorted(s.label for s in samples) == [0] * 4 + [1] * 4
    by_bytes = {b: lab for b, lab in scene_images}
    for s in samples:  # lazy parquet reads return the very bytes that were stored, label intact
        assert by_bytes[s.bytes()] == s.label
        assert s.image().size == Image.open(io.BytesIO(s.bytes())).size
        assert s.meta["scene_description"].startswith("scene ")


def test_pull_rejects_a_parquet_without_the_natix_schema(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"img": [b"x"], "target": [1]}), bad)
    assert cli(["data", "pull", "--out", str(tmp_path / "o"), "--from", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "missing column" in err and "image" in err


def test_download_needs_network_and_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE"):
        download(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"), raising=False)
    with pytest.raises(DatasetError, match="token"):
        download(tmp_path)


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_csv_and_split(tmp_path, scene_images):
    for i, (b, lab) in enumerate(scene_images):
        _write(tmp_path / "ds" / ("roadwork" if lab else "none") / f"{i}.jpg", b)
    s = D.load_samples(tmp_path / "ds")
    assert D.label_counts(s) == {"roadwork": 4, "none": 4, "unlabelled": 0}
    train, val = D.split_samples(s, 0.25, seed=0)
    assert len(val) == 2 and {x.label for x in val} == {0, 1} and len(train) == 6
    assert len(D.load_samples(tmp_path / "ds", limit=4, seed=1)) == 4
    # CSV with relative paths and a source column
    rows = ["path,label,source"] + [f"ds/{'roadwork' if lab else 'none'}/{i}.jpg,{lab},synthetic"
                                    for i, (_, lab) in enumerate(scene_images)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    c = D.load_samples(tmp_path / "labels.csv")
    assert [x.label for x in c] == [lab for _, lab in scene_images] and {x.source for x in c} == {"synthetic"}
    # an unlabelled folder is accepted unless labels are required
    _write(tmp_path / "flat" / "a.jpg", scene_images[0][0])
    assert D.load_samples(tmp_path / "flat")[0].label is None
    with pytest.raises(D.DataError, match="no label"):
        D.load_samples(tmp_path / "flat", labelled=True)
    with pytest.raises(D.DataError, match="not 0/1"):
        (tmp_path / "bad.csv").write_text("path,label\nds/none/1.jpg,7\n")
        D.load_samples(tmp_path / "bad.csv")


def test_validate_reports_what_must_be_fixed(tmp_path, scene_images, capsys):
    root = tmp_path / "ds"
    for i, (b, lab) in enumerate(scene_images):
        _write(root / ("roadwork" if lab else "none") / f"{i}.jpg", b)
    # a near-duplicate with the same label (re-encoded at another quality)
    im = Image.open(io.BytesIO(scene_images[0][0]))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=60)
    _write(root / "roadwork" / "0_copy.jpg", buf.getvalue())
    clean_report = tmp_path / "clean.json"
    assert cli(["data", "validate", str(root), "--json", str(clean_report), "--quiet"]) == 0
    r = json.loads(clean_report.read_text())
    assert r["near_duplicates"]["groups"] == 1 and r["near_duplicates"]["images"] == 2
    assert r["labels"] == {"roadwork": 5, "none": 4} and r["errors"] == []
    assert r["sizes"]["width"]["max"] == 256 and r["sizes"]["formats"] == {"JPEG": 9}
    assert cli(["data", "validate", str(root), "--strict", "--quiet"]) == 1  # the duplicate is a warning

    # a truncated file and the same picture filed under both labels: errors
    _write(root / "none" / "broken.jpg", scene_images[1][0][:200])
    _write(root / "none" / "mislabelled.jpg", scene_images[2][0])  # label 1 elsewhere
    capsys.readouterr()
    out_json = tmp_path / "bad.json"
    assert cli(["data", "validate", str(root), "--json", str(out_json), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "corrupt" in text and "conflicting labels" in text and "FAILED" in text
    r = json.loads(out_json.read_text())
    assert [c["key"] for c in r["corrupt"]] == [str(root / "none" / "broken.jpg")]
    assert r["conflicting_duplicates"]["groups"] == 1
    keys = {e["key"] for e in r["conflicting_duplicates"]["examples"][0]}
    assert str(root / "none" / "mislabelled.jpg") in keys


def test_validate_flags_a_missing_class_and_imbalance(tmp_path, scene_images):
    from natix_miner.training.validate import validate_samples

    only_pos = [D.Sample(key=str(i), label=1, data=b) for i, (b, lab) in enumerate(scene_images) if lab == 1]
    r = validate_samples(only_pos, progress=False)
    assert not r["ok"] and any("only one class" in e for e in r["errors"])
    skew = only_pos + [D.Sample(key="n0", label=0, data=scene_images[1][0])]
    r = validate_samples(skew, progress=False, min_share=0.3)
    assert r["ok"] and any("imbalance" in w for w in r["warnings"])


def test_near_duplicate_pairs_bit_counting():
    from natix_miner.training.validate import near_duplicate_pairs

    h = np.array([0, 0b111, 0xFFFF_FFFF_FFFF_FFFF, 0b1], dtype=np.uint64)
    pairs = near_duplicate_pairs(h, max_distance=3, chunk=2)
    assert sorted(pairs) == [(0, 1, 3), (0, 3, 1), (1, 3, 2)]
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest keeps the suite offline
