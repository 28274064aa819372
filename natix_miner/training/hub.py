"""``natix-miner data pull``: the NATIX roadwork dataset (parquet) onto local disk.

The validator's real challenges come from the Hugging Face dataset ``natix-network-org/roadwork``
(parquet; ``image`` as ``{bytes, path}`` or raw bytes, ``label`` 0/1, ``scene_description``). It
needs a Hugging Face token (``--token``, ``HF_TOKEN`` or ``hf auth login``).

Two steps, the second shared with local copies:

1. :func:`download` - ``huggingface_hub.snapshot_download`` of the parquet files;
2. :func:`ingest`   - check each parquet file's schema, count rows and labels, place the files
   under ``OUT/data/`` and write ``OUT/manifest.json``. ``--from PATH`` runs only this step on a
   local parquet file or directory (an offline copy, a mirror, a test fixture).

Usage::

    natix-miner data pull --out data/roadwork                  # needs HF_TOKEN and network
    natix-miner data pull --out data/roadwork --from /mnt/roadwork-parquet

    from natix_miner.training.hub import pull
    manifest = pull("data/roadwork", source="/mnt/roadwork.parquet")
"""

import datetime
import hashlib
import json
import os
import shutil
import typing
from pathlib import Path

DATASET_ID = "natix-network-org/roadwork"
REQUIRED_COLUMNS = ("image", "label")
KNOWN_COLUMNS = ("image", "label", "scene_description")


class DatasetError(RuntimeError):
    """The dataset cannot be fetched or is not in the NATIX schema; the message says what to do."""


def resolve_token(token: typing.Optional[str] = None) -> typing.Optional[str]:
    """``--token``, else ``HF_TOKEN`` / ``HUGGING_FACE_HUB_TOKEN``, else the stored login."""
    if token:
        return token
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def download(out_dir: typing.Union[str, Path], repo_id: str = DATASET_ID, token: typing.Optional[str] = None,
             revision: typing.Optional[str] = None, patterns: typing.Sequence[str] = ("*.parquet", "*.md")) -> Path:
    """Fetch the dataset's parquet files into ``out_dir/raw`` (resumable). Returns that folder."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DatasetError("HF_HUB_OFFLINE is set: cannot download; unset it, or use --from PATH with a local copy")
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    tok = resolve_token(token)
    if not tok:
        raise DatasetError(f"{repo_id} needs a Hugging Face token: pass --token, set HF_TOKEN, "
                           "or run `hf auth login`")
    raw = Path(out_dir) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    try:
        path = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision, token=tok,
                                 local_dir=str(raw), allow_patterns=list(patterns))
    except hf_errors.GatedRepoError as exc:
        raise DatasetError(f"{repo_id} is gated: accept its terms on huggingface.co with the token's account ({exc})") from None
    except hf_errors.RepositoryNotFoundError as exc:
        raise DatasetError(f"{repo_id} not found or the token has no access ({exc})") from None
    except hf_errors.RevisionNotFoundError as exc:
        raise DatasetError(f"revision {revision!r} not found in {repo_id} ({exc})") from None
    except hf_errors.HfHubHTTPError as exc:
        raise DatasetError(f"download of {repo_id} failed: {exc}") from None
    return Path(path)


def find_parquet(path: typing.Union[str, Path]) -> typing.List[Path]:
    p = Path(path)
    if p.is_file():
        if p.suffix != ".parquet":
            raise DatasetError(f"{p} is not a .parquet file")
        return [p]
    if not p.is_dir():
        raise DatasetError(f"{p}: no such file or directory")
    files = sorted(q for q in p.rglob("*.parquet") if ".cache" not in q.parts)
    if not files:
        raise DatasetError(f"{p}: no .parquet files found")
    return files


def inspect_parquet(path: Path) -> dict:
    """Schema check and label counts without decoding images (reads the ``label`` column only)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    schema = pf.schema_arrow
    names = schema.names
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {names} "
                           f"(the NATIX schema has {list(KNOWN_COLUMNS)})")
    img_type = schema.field("image").type
    kind = _image_kind(img_type)
    if kind is None:
        raise DatasetError(f"{path}: column 'image' has type {img_type}; expected binary or struct<bytes, path>")
    labels = pf.read(columns=["label"]).column("label").to_pylist()
    counts: typing.Dict[str, int] = {}
    for v in labels:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return {"rows": pf.metadata.num_rows, "columns": names, "image_type": kind, "labels": counts}


def _image_kind(t) -> typing.Optional[str]:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
        return "struct"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest(source: typing.Union[str, Path], out_dir: typing.Union[str, Path], repo_id: str = DATASET_ID,
           revision: typing.Optional[str] = None, link: bool = True) -> dict:
    """Check, place and index parquet files from ``source`` under ``out_dir``; write the manifest."""
    from tqdm import tqdm

    out = Path(out_dir)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    src_root = Path(source)
    files = find_parquet(src_root)
    entries = []
    totals: typing.Dict[str, int] = {}
    for f in tqdm(files, desc="ingest", unit="file", disable=len(files) < 2):
        info = inspect_parquet(f)
        rel = f.relative_to(src_root) if src_root.is_dir() else Path(f.name)
        target = data_dir / "__".join(rel.parts)
        if f.resolve() != target.resolve():
            if target.exists():
                target.unlink()
            try:
                if not link:
                    raise OSError
                os.link(f, target)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(f, target)
        for k, v in info["labels"].items():
            totals[k] = totals.get(k, 0) + v
        entries.append({"file": str(target.relative_to(out)), "source": str(f), "sha256": _sha256(target),
                        "split": _split_of(rel), **info})
    manifest = {
        "dataset": repo_id,
        "revision": revision,
        "pulled_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": sum(e["rows"] for e in entries),
        "labels": totals,
        "files": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _split_of(rel: Path) -> str:
    name = "/".join(rel.parts).lower()
    for split in ("train", "validation", "valid", "val", "test"):
        if split in name:
            return split
    return "train"


def pull(out_dir: typing.Union[str, Path], repo_id: str = DATASET_ID, token: typing.Optional[str] = None,
         revision: typing.Optional[str] = None, source: typing.Optional[typing.Union[str, Path]] = None) -> dict:
    """Download (unless ``source`` is a local copy) then :func:`ingest`. Returns the manifest."""
    if source is None:
        source = download(out_dir, repo_id=repo_id, token=token, revision=revision)
    return ingest(source, out_dir, repo_id=repo_id, revision=revision)
