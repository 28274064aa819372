"""Challenge images for the mock validator and the demo head: folders, NATIX parquet, procedural.

The stream mirrors the validator's mix: a label drawn 0/1 with equal odds, then "synthetic" with
probability ``synthetic_fraction`` (0.5 on the live subnet), then an image of that label from the
matching source. Real images come from the given source; synthetic ones come from the procedural
generator's square "synthetic" style by default (the validator's come from SDXL), or from the same
source with ``synthetic_source="same"``.

Sources:

* ``procedural`` - :mod:`natix_miner.synth.scenes`, unlimited and offline;
* a directory with ``roadwork/`` and ``none/`` subfolders (``1/``/``0/`` also work), or a directory
  with a labels CSV (columns ``path`` (or ``file``/``filename``/``image``) and ``label``);
* a parquet file (or a directory of them) in the NATIX dataset schema: ``image`` as bytes or
  ``{bytes: ..., path: ...}``, ``label`` 0/1, optional ``scene_description``. Only the label column
  is read up front; images are read per row group, once, for the rows a run actually uses.

Usage::

    from natix_miner.synth.sources import ChallengeStream, open_source
    stream = ChallengeStream(open_source("procedural"), seed=0)
    for ch in stream.take(10):
        ch.image, ch.label, ch.synthetic, ch.origin
"""

import csv
import dataclasses
import io
import os
import typing
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
POSITIVE_DIRS = ("roadwork", "Roadwork", "1")
NEGATIVE_DIRS = ("none", "None", "0", "no_roadwork")
_PATH_COLUMNS = ("path", "file", "filename", "image", "image_path")


class SourceError(ValueError):
    """A challenge source is missing, empty or malformed; the message says what to fix."""


def parse_label(value) -> int:
    s = str(value).strip().lower()
    if s in ("1", "1.0", "roadwork", "true", "yes"):
        return 1
    if s in ("0", "0.0", "none", "no_roadwork", "false", "no"):
        return 0
    raise SourceError(f"label {value!r} is not 0/1 (or roadwork/none)")


@dataclasses.dataclass
class Challenge:
    index: int
    image: Image.Image
    label: int
    synthetic: bool
    origin: str             # "procedural:<seed>", a file path, "<parquet>#<row>"
    description: str = ""


class ImageSource:
    """Choose a key for a label, then load keys (in a batch, so parquet reads each row group once)."""

    name = "source"

    def choose(self, label: int, rng: np.random.Generator, synthetic: bool) -> typing.Any:
        raise NotImplementedError

    def load(self, keys: typing.Sequence[typing.Any]) -> typing.List[typing.Tuple[Image.Image, str, str]]:
        """-> (image, origin, description) per key."""
        raise NotImplementedError

    def prefetch(self, keys: typing.Sequence[typing.Any]) -> None:
        """Optional: fetch the raw data of many keys at once (parquet reads each row group once)."""


class ProceduralSource(ImageSource):
    name = "procedural"

    def choose(self, label, rng, synthetic):
        return (label, int(rng.integers(0, 2 ** 31 - 1)), bool(synthetic))

    def load(self, keys):
        from natix_miner.synth.scenes import render_scene

        out = []
        for label, seed, synthetic in keys:
            sc = render_scene(label, seed, synthetic=synthetic)
            out.append((sc.image, f"procedural:{seed}{':synthetic' if synthetic else ''}", sc.description))
        return out


def _open_image(data_or_path) -> Image.Image:
    try:
        src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
        with Image.open(src) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise SourceError(f"cannot decode image {str(data_or_path)[:80]!r}: {exc}") from None


class FolderSource(ImageSource):
    name = "folder"

    def __init__(self, root: typing.Union[str, Path]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SourceError(f"{root}: not a directory")
        self.files: typing.Dict[int, typing.List[Path]] = {0: [], 1: []}
        pos = next((self.root / d for d in POSITIVE_DIRS if (self.root / d).is_dir()), None)
        neg = next((self.root / d for d in NEGATIVE_DIRS if (self.root / d).is_dir()), None)
        if pos is not None or neg is not None:
            for label, d in ((1, pos), (0, neg)):
                if d is not None:
                    self.files[label] = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        else:
            csvs = sorted(self.root.glob("*.csv"))
            if not csvs:
                raise SourceError(f"{root}: expected roadwork/ and none/ subfolders or a labels CSV")
            self._read_csv(next((c for c in csvs if c.stem == "labels"), csvs[0]))
        for label in (0, 1):
            if not self.files[label]:
                raise SourceError(f"{root}: no images with label {label}")

    def _read_csv(self, path: Path) -> None:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = {c.lower(): c for c in (reader.fieldnames or [])}
            pcol = next((cols[c] for c in _PATH_COLUMNS if c in cols), None)
            if pcol is None or "label" not in cols:
                raise SourceError(f"{path}: needs a label column and one of {_PATH_COLUMNS}")
            for i, row in enumerate(reader):
                p = Path(row[pcol])
                p = p if p.is_absolute() else path.parent / p
                if not p.exists():
                    raise SourceError(f"{path}: row {i + 2}: {p} does not exist")
                self.files[parse_label(row[cols["label"]])].append(p)

    def choose(self, label, rng, synthetic):
        files = self.files[label]
        return files[int(rng.integers(0, len(files)))]

    def load(self, keys):
        return [(_open_image(p), str(p), "") for p in keys]


class ParquetSource(ImageSource):
    name = "parquet"

    def __init__(self, path: typing.Union[str, Path]):
        import pyarrow.parquet as pq

        p = Path(path)
        files = sorted(p.glob("**/*.parquet")) if p.is_dir() else [p]
        if not files or not all(f.exists() for f in files):
            raise SourceError(f"{path}: no parquet file")
        self.files = files
        self.rows: typing.Dict[int, typing.List[typing.Tuple[int, int]]] = {0: [], 1: []}  # (file, row)
        self.group_of: typing.List[np.ndarray] = []  # per file: row -> row group
        self._raw: typing.Dict[typing.Tuple[int, int], typing.Tuple[bytes, str]] = {}
        for fi, f in enumerate(files):
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            for col in ("image", "label"):
                if col not in names:
                    raise SourceError(f"{f}: missing column {col!r} (has {names})")
            labels = pf.read(columns=["label"]).column("label").to_pylist()
            for r, v in enumerate(labels):
                self.rows[parse_label(v)].append((fi, r))
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            self.group_of.append(np.repeat(np.arange(len(sizes)), sizes))
        for label in (0, 1):
            if not self.rows[label]:
                raise SourceError(f"{path}: no rows with label {label}")

    def choose(self, label, rng, synthetic):
        rows = self.rows[label]
        return rows[int(rng.integers(0, len(rows)))]

    def prefetch(self, keys):
        """Read the encoded bytes of ``keys``, each needed row group once."""
        import pyarrow.parquet as pq

        wanted: typing.Dict[typing.Tuple[int, int], typing.Set[int]] = {}
        for fi, r in keys:
            if (fi, r) not in self._raw:
                wanted.setdefault((fi, int(self.group_of[fi][r])), set()).add(r)
        for (fi, g), rows in sorted(wanted.items()):
            pf = pq.ParquetFile(self.files[fi])
            cols = ["image"] + (["scene_description"] if "scene_description" in pf.schema_arrow.names else [])
            table = pf.read_row_group(g, columns=cols)
            start = int(np.searchsorted(self.group_of[fi], g))
            images = table.column("image")
            descs = table.column("scene_description") if "scene_description" in cols else None
            for r in rows:
                v = images[r - start].as_py()
                data = v.get("bytes") if isinstance(v, dict) else v
                if not data and isinstance(v, dict) and v.get("path") and os.path.exists(v["path"]):
                    data = Path(v["path"]).read_bytes()
                if not data:
                    raise SourceError(f"{self.files[fi]}: row {r}: empty image")
                desc = str(descs[r - start].as_py() or "") if descs is not None else ""
                self._raw[(fi, r)] = (bytes(data), desc)

    def load(self, keys):
        self.prefetch(keys)
        out = []
        for fi, r in keys:
            data, desc = self._raw[(fi, r)]
            out.append((_open_image(data), f"{self.files[fi]}#{r}", desc))
        return out


def open_source(spec: str) -> ImageSource:
    """``procedural``, a directory (class folders, labels CSV, or parquet files) or a parquet file."""
    if spec == "procedural":
        return ProceduralSource()
    p = Path(spec)
    if not p.exists():
        raise SourceError(f"source {spec!r}: not 'procedural' and no such file or directory")
    if p.is_file():
        if p.suffix.lower() != ".parquet":
            raise SourceError(f"{spec}: a file source must be .parquet")
        return ParquetSource(p)
    has_class_dirs = any((p / d).is_dir() for d in POSITIVE_DIRS + NEGATIVE_DIRS)
    if not has_class_dirs and not list(p.glob("*.csv")) and list(p.glob("**/*.parquet")):
        return ParquetSource(p)
    return FolderSource(p)


class ChallengeStream:
    """The validator's challenge mix over a real source and a synthetic one, seeded."""

    def __init__(self, real: ImageSource, synthetic: typing.Optional[ImageSource] = None,
                 seed: typing.Optional[int] = None, synthetic_fraction: float = 0.5):
        if not 0.0 <= synthetic_fraction <= 1.0:
            raise ValueError("synthetic_fraction must be in [0, 1]")
        self.real = real
        self.synthetic = synthetic if synthetic is not None else (
            real if isinstance(real, ProceduralSource) else ProceduralSource())
        self.fraction = synthetic_fraction
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def plan(self, n: int) -> typing.List[typing.Tuple[int, bool, typing.Any]]:
        out = []
        for _ in range(n):
            label = int(self.rng.integers(0, 2))
            synthetic = bool(self.rng.random() < self.fraction)
            src = self.synthetic if synthetic else self.real
            out.append((label, synthetic, src.choose(label, self.rng, synthetic)))
        return out

    def load(self, plan) -> typing.List[Challenge]:
        """Materialise planned challenges (each source loads its keys in one batch)."""
        results: typing.List[typing.Optional[Challenge]] = [None] * len(plan)
        for src in {id(self.real): self.real, id(self.synthetic): self.synthetic}.values():
            idx = [i for i, (_, syn, _) in enumerate(plan) if (self.synthetic if syn else self.real) is src]
            if not idx:
                continue
            loaded = src.load([plan[i][2] for i in idx])
            for i, (img, origin, desc) in zip(idx, loaded):
                label, syn, _ = plan[i]
                results[i] = Challenge(self.count + i, img, label, syn, origin, desc)
        self.count += len(plan)
        return typing.cast(typing.List[Challenge], results)

    def take(self, n: int, chunk: int = 8) -> typing.Iterator[Challenge]:
        """Yield ``n`` challenges: plan all, prefetch raw data, decode ``chunk`` at a time."""
        plan = self.plan(n)
        for src in {id(self.real): self.real, id(self.synthetic): self.synthetic}.values():
            src.prefetch([key for _, syn, key in plan if (self.synthetic if syn else self.real) is src])
        for i in range(0, n, chunk):
            yield from self.load(plan[i:i + chunk])
