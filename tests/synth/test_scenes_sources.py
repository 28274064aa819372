"""Challenge sources: class folders, labels CSV, NATIX-schema parquet, procedural; the validator mix."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from natix_miner.synth.sources import ChallengeStream, ProceduralSource, SourceError, open_source


def _jpeg(colour, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _red(img) -> int:
    return img.getpixel((10, 10))[0]


def test_class_folders(tmp_path):
    for sub, colour in (("roadwork", (250, 0, 0)), ("none", (0, 0, 250))):
        (tmp_path / sub).mkdir()
        for i in range(3):
            (tmp_path / sub / f"{i}.jpg").write_bytes(_jpeg(colour))
    stream = ChallengeStream(open_source(str(tmp_path)), seed=0, synthetic_fraction=0.0)
    got = list(stream.take(20))
    assert [c.index for c in got] == list(range(20))
    assert {c.label for c in got} == {0, 1}
    for c in got:
        assert (_red(c.image) > 200) == (c.label == 1) and not c.synthetic


def test_labels_csv(tmp_path):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        (tmp_path / "img" / f"{i}.png").write_bytes(_jpeg((250, 0, 0) if i % 2 else (0, 0, 250)))
        rows.append({"filename": f"img/{i}.png", "label": "roadwork" if i % 2 else "none"})
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "label"])
        w.writeheader()
        w.writerows(rows)
    for c in ChallengeStream(open_source(str(tmp_path)), seed=1, synthetic_fraction=0.0).take(12):
        assert (_red(c.image) > 200) == (c.label == 1)


@pytest.mark.parametrize("as_struct", [True, False])
def test_parquet_natix_schema(tmp_path, as_struct):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(25):
        data = _jpeg((i * 10, 0, 0))
        rows.append({"image": {"bytes": data, "path": None} if as_struct else data, "label": i % 2,
                     "scene_description": f"row {i}"})
    path = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=6)
    got = list(ChallengeStream(open_source(str(path)), seed=2, synthetic_fraction=0.0).take(15))
    for c in got:
        row = int(c.origin.rsplit("#", 1)[1])
        assert c.label == row % 2 and c.description == f"row {row}"
        assert abs(_red(c.image) - row * 10) <= 3        # the image of that very row
    assert open_source(str(tmp_path)).files == [path]     # a directory of parquet files


def test_half_the_stream_is_synthetic_and_labels_are_balanced():
    class Tagged(ProceduralSource):
        def load(self, keys):
            return [(Image.new("RGB", (8, 8)), f"{label}", "") for label, _, _ in keys]

    stream = ChallengeStream(Tagged(), seed=3)
    plan = stream.plan(2000)
    labels = np.array([p[0] for p in plan])
    synthetic = np.array([p[1] for p in plan])
    assert abs(labels.mean() - 0.5) < 0.04 and abs(synthetic.mean() - 0.5) < 0.04
    assert all(key[2] == syn for _, syn, key in plan)  # the synthetic half asks for the synthetic style
    a = ChallengeStream(Tagged(), seed=9).plan(50)
    b = ChallengeStream(Tagged(), seed=9).plan(50)
    assert a == b


def test_procedural_stream_end_to_end():
    got = list(ChallengeStream(ProceduralSource(), seed=4).take(3))
    assert all(c.origin.startswith("procedural:") and c.image.mode == "RGB" for c in got)
    assert all((c.image.size == (1024, 1024)) == c.synthetic for c in got)


def test_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "missing"))
    (tmp_path / "roadwork").mkdir()
    (tmp_path / "roadwork" / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    with pytest.raises(SourceError, match="label 0"):
        open_source(str(tmp_path))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SourceError, match="parquet"):
        open_source(str(tmp_path / "x.txt"))
