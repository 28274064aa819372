"""Labelled images for training, calibration and evaluation, from any of the supported sources.

A *data spec* is one string:

* ``procedural``, ``procedural:N`` or ``procedural:N:LONG_SIDE`` - N seeded procedural dashcam scenes
  (default 400; half roadwork, half in the "synthetic" style), optionally rendered smaller;
* a folder with ``roadwork/`` and ``none/`` sub-folders (``1/``/``0/`` also work), or with a
  ``labels.csv``; a folder with neither is *unlabelled* (every image, label ``None``);
* a CSV file with a path column (``path``/``image``/``file``) and ``label``, optional ``source``;
* a parquet file or folder in the NATIX schema (``image`` bytes or ``{bytes, path}``, ``label``,
  ``scene_description``), or the folder ``natix-miner data pull`` wrote (its ``manifest.json``).

Every source yields :class:`Sample` objects whose pixels are read only when needed (parquet rows
through a small per-process row-group cache), so a 10 GB dataset is indexed, not loaded. The folder
and label conventions are the mock validator's (:mod:`natix_miner.synth.sources`); unlike its
sampling streams, training needs every image exactly once, unlabelled folders, and splits.

Usage::

    from natix_miner.training.datasets import load_samples, split_samples
    samples = load_samples("data/roadwork", limit=2000, seed=0)
    train, val = split_samples(samples, val_fraction=0.15, seed=0)
    samples[0].label, samples[0].source, samples[0].image()      # 1, "real", PIL RGB
"""

import csv
import dataclasses
import functools
import io
import json
import random
import typing
from pathlib import Path

from natix_miner.synth import sources as _sources  # the mock validator's conventions, shared

IMAGE_EXTENSIONS = tuple(sorted(_sources.IMAGE_EXTS))
POSITIVE_DIRS = tuple(dict.fromkeys(d.lower() for d in _sources.POSITIVE_DIRS))
NEGATIVE_DIRS = tuple(dict.fromkeys(d.lower() for d in _sources.NEGATIVE_DIRS))
PATH_COLUMNS = _sources._PATH_COLUMNS
DEFAULT_PROCEDURAL = 400


class DataError(ValueError):
    """A data spec that cannot be read; the message names the file and the problem."""


@dataclasses.dataclass
class Sample:
    key: str  # stable identity: a path, or "file.parquet#row"
    label: typing.Optional[int]
    source: str = "real"  # "real" | "synthetic" | a name
    path: typing.Optional[str] = None
    data: typing.Optional[bytes] = None
    ref: typing.Optional["ParquetRef"] = None
    meta: typing.Dict[str, typing.Any] = dataclasses.field(default_factory=dict)

    def bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.ref is not None:
            return self.ref.read()
        if self.path is not None:
            with open(self.path, "rb") as f:
                return f.read()
        raise DataError(f"{self.key}: no image data")

    def image(self):
        """RGB PIL image through the miner's safe decoder (bombs and garbage raise ImageError)."""
        from natix_miner.imaging.decode import decode_bytes

        return decode_bytes(self.bytes(), eager=True).pil()


# ------------------------------------------------------------------------------------------------
# parquet


@dataclasses.dataclass(frozen=True)
class ParquetRef:
    file: str
    row_group: int
    offset: int

    def read(self) -> bytes:
        return _row_group_images(self.file, self.row_group)[self.offset]


@functools.lru_cache(maxsize=4)
def _row_group_images(file: str, row_group: int) -> typing.List[bytes]:
    import pyarrow.parquet as pq

    col = pq.ParquetFile(file).read_row_group(row_group, columns=["image"]).column("image").to_pylist()
    return [image_bytes(v, file) for v in col]


def image_bytes(value, where: str = "") -> bytes:
    """The NATIX ``image`` cell: raw bytes, or ``{"bytes": ..., "path": ...}`` (Hugging Face Image)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        b = value.get("bytes")
        if b:
            return bytes(b)
        p = value.get("path")
        if p and Path(p).exists():
            return Path(p).read_bytes()
    raise DataError(f"{where}: image cell has no bytes ({type(value).__name__})")


def _parquet_files(path: Path) -> typing.List[Path]:
    manifest = path / "manifest.json" if path.is_dir() else None
    if manifest is not None and manifest.exists():
        doc = json.loads(manifest.read_text())
        return [path / f["file"] for f in doc.get("files", [])]
    from natix_miner.training.hub import DatasetError, find_parquet

    try:
        return find_parquet(path)
    except DatasetError as exc:
        raise DataError(str(exc)) from None


def from_parquet(path: typing.Union[str, Path], source: str = "real") -> typing.List[Sample]:
    import pyarrow.parquet as pq

    out: typing.List[Sample] = []
    for f in _parquet_files(Path(path)):
        pf = pq.ParquetFile(str(f))
        names = pf.schema_arrow.names
        if "image" not in names:
            raise DataError(f"{f}: no 'image' column (columns: {names})")
        cols = [c for c in ("label", "scene_description", "source") if c in names]
        row = 0
        for rg in range(pf.num_row_groups):
            meta = pf.read_row_group(rg, columns=cols).to_pylist() if cols else \
                [{}] * pf.metadata.row_group(rg).num_rows
            for off, m in enumerate(meta):
                label = m.get("label")
                out.append(Sample(key=f"{f}#{row}", label=_label(label, f"{f}#{row}"),
                                  source=str(m.get("source") or source), ref=ParquetRef(str(f), rg, off),
                                  meta={k: v for k, v in m.items() if k not in ("label", "source")}))
                row += 1
    return out


# ------------------------------------------------------------------------------------------------
# folders and CSV


def _label(value, where: str) -> typing.Optional[int]:
    """0/1 (also roadwork/none, true/false) like the mock validator's sources; empty = unlabelled."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return _sources.parse_label(value)
    except _sources.SourceError:
        raise DataError(f"{where}: label {value!r} is not 0/1") from None


def _images_under(folder: Path) -> typing.List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _source_of(path: Path) -> str:
    parts = {p.lower() for p in path.parts}
    return "synthetic" if parts & {"synthetic", "synth", "generated", "sdxl"} else "real"


def from_folder(path: typing.Union[str, Path]) -> typing.List[Sample]:
    root = Path(path)
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    pos = [subdirs[n] for n in POSITIVE_DIRS if n in subdirs]
    neg = [subdirs[n] for n in NEGATIVE_DIRS if n in subdirs]
    if (root / "labels.csv").exists() and not (pos or neg):
        return from_csv(root / "labels.csv")
    out: typing.List[Sample] = []
    if pos or neg:
        for label, dirs in ((1, pos), (0, neg)):
            for d in dirs:
                for p in _images_under(d):
                    out.append(Sample(key=str(p), label=label, source=_source_of(p.relative_to(root)), path=str(p)))
        return out
    return [Sample(key=str(p), label=None, source=_source_of(p.relative_to(root)), path=str(p))
            for p in _images_under(root)]


def from_csv(path: typing.Union[str, Path]) -> typing.List[Sample]:
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.lower(): c for c in (reader.fieldnames or [])}
        pcol = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
        if pcol is None:
            raise DataError(f"{path}: no path column (one of {PATH_COLUMNS}); columns: {reader.fieldnames}")
        lcol = cols.get("label")
        scol = cols.get("source")
        out = []
        for i, row in enumerate(reader, start=2):
            p = Path(row[pcol])
            if not p.is_absolute():
                p = path.parent / p
            label = _label(row.get(lcol), f"{path}:{i}") if lcol else None
            meta = {k: v for k, v in row.items() if k not in (pcol, lcol, scol)}
            out.append(Sample(key=str(p), label=label, source=(row.get(scol) if scol else None) or _source_of(p),
                              path=str(p), meta=meta))
    return out


# ------------------------------------------------------------------------------------------------
# procedural scenes


def procedural_size(index: int, synthetic: bool, long_side: typing.Optional[int]) -> typing.Optional[typing.Tuple[int, int]]:
    """``None`` (the generator's own sizes) or the long side scaled down, aspect kept."""
    if long_side is None:
        return None
    from natix_miner.synth import scenes

    w, h = scenes.SYNTHETIC_SIZE if synthetic else scenes.REAL_SIZES[index % len(scenes.REAL_SIZES)]
    k = long_side / max(w, h)
    return max(32, int(round(w * k))), max(32, int(round(h * k)))


def _render_one(job) -> "Sample":
    """One procedural scene as a Sample (top level: picklable for worker processes)."""
    from natix_miner.synth import scenes

    i, seed, long_side = job
    label = 1 - (i % 2)
    synthetic = (i // 2) % 2 == 1
    sd = seed * 1_000_003 + i
    scene = scenes.render_scene(label, sd, size=procedural_size(i, synthetic, long_side), synthetic=synthetic)
    buf = io.BytesIO()
    scene.image.save(buf, format="JPEG", quality=95)
    boxes = [{"kind": o.kind, "box": [float(v) for v in o.box]} for o in scene.objects if o.roadwork]
    return Sample(key=f"procedural:{seed}:{i}", label=label, source="synthetic" if synthetic else "real",
                  data=buf.getvalue(), meta={"seed": sd, "scene_description": scene.description,
                                             "boxes": boxes, "size": list(scene.image.size)})


def from_procedural(n: int = DEFAULT_PROCEDURAL, seed: int = 0, long_side: typing.Optional[int] = None,
                    progress: bool = False, workers: int = 0) -> typing.List[Sample]:
    """``n`` seeded procedural scenes (:mod:`natix_miner.synth.scenes`), labels alternating, half of
    each label in the "synthetic" style (SDXL-like, square) and half in the dashcam ("real") style,
    like the validator's mix. Stored as JPEG quality 95; boxes of roadwork objects in ``meta``.
    ``workers`` > 0 renders in that many processes (same scenes, same order)."""
    from tqdm import tqdm

    jobs = [(i, seed, long_side) for i in range(n)]
    if workers and workers > 0 and n > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            it = pool.imap(_render_one, jobs, chunksize=4)
            return list(tqdm(it, total=n, desc="scenes", unit="img", disable=not progress, leave=False))
    return [_render_one(j) for j in tqdm(jobs, desc="scenes", unit="img", disable=not progress, leave=False)]


# ------------------------------------------------------------------------------------------------


def load_samples(spec: typing.Union[str, Path], limit: typing.Optional[int] = None, seed: int = 0,
                 labelled: typing.Optional[bool] = None, progress: bool = True) -> typing.List[Sample]:
    """Read a data spec (see the module docstring). ``limit`` keeps a seeded, class-balanced subset;
    ``labelled=True`` fails on unlabelled data, ``False`` accepts it; ``progress``: a bar while
    procedural scenes render."""
    s = str(spec)
    if s == "procedural" or s.startswith("procedural:"):
        parts = s.split(":")
        try:
            n = int(parts[1]) if len(parts) > 1 and parts[1] else (limit or DEFAULT_PROCEDURAL)
            long_side = int(parts[2]) if len(parts) > 2 else None
        except ValueError:
            raise DataError(f"{s}: expected procedural[:N[:LONG_SIDE]]") from None
        samples = from_procedural(n, seed=seed, long_side=long_side, progress=progress)
    else:
        p = Path(s)
        if not p.exists():
            raise DataError(f"{s}: no such file or folder (expected a folder, .csv, .parquet or 'procedural')")
        if p.is_file():
            if p.suffix == ".parquet":
                samples = from_parquet(p)
            elif p.suffix == ".csv":
                samples = from_csv(p)
            else:
                raise DataError(f"{p}: unsupported file type (use a folder, .csv or .parquet)")
        elif (p / "manifest.json").exists() or (not any(True for _ in _images_under_quick(p))
                                                  and any(p.rglob("*.parquet"))):
            samples = from_parquet(p)
        else:
            samples = from_folder(p)
    if not samples:
        raise DataError(f"{s}: no images found")
    if labelled is True:
        missing = sum(1 for x in samples if x.label is None)
        if missing:
            raise DataError(f"{s}: {missing} of {len(samples)} images have no label "
                            "(use roadwork/ and none/ folders, a labels CSV or parquet labels)")
    if limit is not None and len(samples) > limit:
        samples = balanced_subset(samples, limit, seed)
    return samples


def _images_under_quick(folder: Path):
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            yield p
            return


def balanced_subset(samples: typing.Sequence[Sample], n: int, seed: int = 0) -> typing.List[Sample]:
    """``n`` samples, as close to half of each label as the data allows, seeded."""
    rng = random.Random(seed)
    groups: typing.Dict[typing.Optional[int], typing.List[Sample]] = {}
    for s in samples:
        groups.setdefault(s.label, []).append(s)
    for g in groups.values():
        rng.shuffle(g)
    out: typing.List[Sample] = []
    keys = sorted(groups, key=lambda k: (k is None, k))
    while len(out) < n and any(groups.values()):
        for k in keys:
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    rng.shuffle(out)
    return out


def split_samples(samples: typing.Sequence[Sample], val_fraction: float = 0.15,
                  seed: int = 0) -> typing.Tuple[typing.List[Sample], typing.List[Sample]]:
    """Stratified by label, seeded; at least one validation image of each label present."""
    if not 0 < val_fraction < 1:
        raise DataError("val_fraction must be between 0 and 1")
    rng = random.Random(seed)
    train, val = [], []
    by_label: typing.Dict[typing.Optional[int], typing.List[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    for _, group in sorted(by_label.items(), key=lambda kv: (kv[0] is None, kv[0])):
        group = list(group)
        rng.shuffle(group)
        k = max(1, int(round(len(group) * val_fraction))) if len(group) > 1 else 0
        val.extend(group[:k])
        train.extend(group[k:])
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def label_counts(samples: typing.Iterable[Sample]) -> typing.Dict[str, int]:
    out = {"roadwork": 0, "none": 0, "unlabelled": 0}
    for s in samples:
        out["roadwork" if s.label == 1 else "none" if s.label == 0 else "unlabelled"] += 1
    return out
