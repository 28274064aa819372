"""The local model store: one manifest per model (committed), the weights beside it (git-ignored).

Layout (root = ``natix_miner.resources.model_store_dir()``: ``$NATIX_MODEL_DIR``, else ``models/`` of the
checkout, else ``./models`` for an installed package)::

    models/manifests/<name>.json   name, family, hub id + revision, sha256 + size of every file, licence
    models/cards/<name>.md         a short human card (optional, committed)
    models/weights/<name>/         the files themselves (git-ignored)

A manifest may instead point at files elsewhere: ``"path": "package:rapidocr_onnxruntime/models"``
(files shipped inside a pip wheel) or an absolute / repo-relative directory (``models add --mode
in-place``). Manifests are read from ``<root>/manifests`` and, when the root is elsewhere, also from
the shipped ``models/manifests`` (read-only: the checkout's, or the installed package's copy; see
:mod:`natix_miner.resources`), so committed manifests stay visible with weights on another disk.

How a profile's ``model:`` (or a head / weights option) is resolved, first match wins:

1. an existing local path (absolute, relative to the working directory, to the profile's directory or
   to the shipped files' root, ``resources.root()``);
2. ``store:NAME`` or a bare ``NAME`` that has a manifest -> the store directory (or its ``entry`` file);
   a manifest whose files are absent is a clear :class:`ModelUnavailable`, never a download;
3. a hub id (``org/name``): a present store model pulled from that id (``models pull``), else,
   with ``HF_HUB_OFFLINE=1``, only the local Hugging Face cache is used and
   a miss is a :class:`ModelUnavailable` at once (no network wait); online, the id is returned for
   transformers to fetch;
4. anything else is returned unchanged (a family's own names: timm architectures, ultralytics yamls).

Usage::

    from natix_miner.models_store import ModelStore, resolve_model_ref
    store = ModelStore()
    [m.name for m in store.manifests()]
    path = resolve_model_ref("store:rapidocr-ppocrv4")     # -> .../rapidocr_onnxruntime/models
    problems = store.verify("rapidocr-ppocrv4")            # [] when every sha256 matches

CLI: ``natix-miner models list|verify|add|pull`` (``natix_miner/commands/models.py``).
"""

import hashlib
import importlib.util
import json
import os
import re
import shutil
import typing
from pathlib import Path

import pydantic

from natix_miner import resources

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")  # an immutable hub revision (a branch or tag can move)
NAME = r"^[a-z0-9][a-z0-9._-]*$"
FILE_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".npz", ".onnx", ".yaml", ".yml", ".json", ".ckpt"}
IGNORED_PARTS = {".cache", ".git", "__pycache__", ".huggingface"}


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded on this machine; the message says why and what to run."""


class FileEntry(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")
    size: int = pydantic.Field(ge=0)


class Manifest(pydantic.BaseModel):
    """One model of the store (``models/manifests/<name>.json``)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(pattern=NAME)
    family: str
    hub_id: typing.Optional[str] = None
    revision: typing.Optional[str] = None  # a commit sha once pinned by `models pull`
    path: typing.Optional[str] = None  # files elsewhere: "package:pkg/sub", absolute or repo-relative
    entry: typing.Optional[str] = None  # resolve to this file inside the directory (single-file models)
    allow_patterns: typing.Optional[typing.List[str]] = None  # what `pull` downloads
    licence: str = "unknown"
    description: str = ""
    card: typing.Optional[str] = None  # e.g. "cards/<name>.md", relative to the store root
    files: typing.Dict[str, FileEntry] = pydantic.Field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def pin(self) -> typing.Optional[str]:
        """How the files are pinned: ``"sha256"`` (every file hashed), ``"revision"`` (an immutable
        40-hex commit of ``hub_id``) or ``None`` (unpinned: a branch or nothing)."""
        if self.files:
            return "sha256"
        if self.revision and COMMIT.match(self.revision):
            return "revision"
        return None

    @property
    def pinned(self) -> bool:
        return self.pin is not None


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def list_files(directory: Path) -> typing.List[str]:
    """Relative paths of the regular files under ``directory`` (download caches skipped)."""
    out = []
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory)
        if any(part in IGNORED_PARTS for part in rel.parts) or not p.is_file():
            continue
        out.append(rel.as_posix())
    return out


def hash_directory(directory: Path, files: typing.Optional[typing.Iterable[str]] = None,
                   show_progress: bool = True) -> typing.Dict[str, FileEntry]:
    """sha256 + size of every file (or of ``files``), with a progress bar over the bytes."""
    from tqdm import tqdm

    rels = list(files) if files is not None else list_files(directory)
    total = sum((directory / r).stat().st_size for r in rels if (directory / r).is_file())
    out = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"sha256 {directory.name}",
              disable=not show_progress or total < (64 << 20)) as bar:
        for rel in rels:
            p = directory / rel
            out[rel] = FileEntry(sha256=sha256_file(p, bar), size=p.stat().st_size)
    return out


def package_dir(spec: str) -> Path:
    """``package:pkg/sub/dir`` -> the directory inside the installed package."""
    pkg, _, sub = spec.removeprefix("package:").partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailable(f"package {pkg!r} is not installed (needed for {spec})")
    return Path(list(found.submodule_search_locations)[0]) / sub


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


class ModelStore:
    """Manifests + weights under one root (see module docstring)."""

    def __init__(self, root: typing.Union[str, Path, None] = None):
        try:
            self.root = Path(root or resources.model_store_dir()).expanduser().resolve()
            shipped = resources.shipped("models/manifests").resolve()
        except resources.RootError as exc:
            raise ModelUnavailable(str(exc)) from None
        self.manifest_dir = self.root / "manifests"
        self.weights_dir = self.root / "weights"
        self.search_dirs = [self.manifest_dir] + ([shipped] if shipped != self.manifest_dir else [])

    # -- manifests ---------------------------------------------------------------------------
    def manifest_path(self, name: str) -> typing.Optional[Path]:
        for d in self.search_dirs:
            p = d / f"{name}.json"
            if p.is_file():
                return p
        return None

    def has(self, name: str) -> bool:
        return bool(re.match(NAME, name)) and self.manifest_path(name) is not None

    def get(self, name: str) -> Manifest:
        p = self.manifest_path(name) if re.match(NAME, name) else None
        if p is None:
            known = ", ".join(m.name for m in self.manifests()) or "none"
            raise ModelUnavailable(f"no model {name!r} in the store ({self.root}); known: {known}")
        try:
            return Manifest.model_validate_json(p.read_text())
        except pydantic.ValidationError as exc:
            raise ModelUnavailable(f"{p}: invalid manifest: {exc}") from None

    def manifests(self) -> typing.List[Manifest]:
        seen: typing.Dict[str, Manifest] = {}
        for d in self.search_dirs:
            for p in sorted(d.glob("*.json")) if d.is_dir() else []:
                if p.stem not in seen:
                    seen[p.stem] = self.get(p.stem)
        return [seen[k] for k in sorted(seen)]

    def save(self, manifest: Manifest) -> Path:
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        p = self.manifest_dir / f"{manifest.name}.json"
        p.write_text(json.dumps(manifest.model_dump(exclude_none=True), indent=2, sort_keys=False) + "\n")
        return p

    # -- files -------------------------------------------------------------------------------
    def directory(self, m: Manifest) -> Path:
        if m.path:
            if m.path.startswith("package:"):
                return package_dir(m.path)
            p = Path(m.path).expanduser()
            return p if p.is_absolute() else (resources.root() / p)
        return self.weights_dir / m.name

    def status(self, m: Manifest) -> typing.Tuple[bool, str]:
        """(present, reason): a cheap check (existence and sizes, no hashing)."""
        try:
            d = self.directory(m)
        except ModelUnavailable as exc:
            return False, str(exc)
        if not d.is_dir():
            return False, f"files absent: {d} does not exist (run `natix-miner models pull {m.name}`)"
        if not m.files:
            if not list_files(d):
                return False, f"{d} is empty and the manifest is unpinned"
            return True, "present (unpinned: no hashes recorded)"
        for rel, fe in m.files.items():
            p = d / rel
            if not p.is_file():
                return False, f"missing {rel} in {d} (run `natix-miner models pull {m.name}`)"
            if p.stat().st_size != fe.size:
                return False, f"{rel}: size {p.stat().st_size} != manifest {fe.size} (run `natix-miner models verify {m.name}`)"
        return True, "present"

    def verify(self, name: str, show_progress: bool = True) -> typing.List[str]:
        """Recompute every sha256; return the problems (empty list = verified)."""
        m = self.get(name)
        d = self.directory(m)
        if not d.is_dir():
            return [f"{name}: {d} does not exist"]
        if not m.files:
            if m.pin == "revision":
                return []  # pinned by an immutable commit; no file hashes to compare
            return [f"{name}: unpinned manifest (no hashes); `models pull` or `models add` records them"]
        problems = []
        present = [r for r in m.files if (d / r).is_file()]
        problems += [f"{name}: missing {r}" for r in m.files if r not in present]
        got = hash_directory(d, present, show_progress)
        for rel in present:
            if got[rel].sha256 != m.files[rel].sha256:
                problems.append(f"{name}: {rel}: sha256 {got[rel].sha256[:12]}... != manifest {m.files[rel].sha256[:12]}...")
        return problems

    def by_hub_id(self, hub_id: str) -> typing.Optional[Manifest]:
        """The present store model pulled from ``hub_id``, if any (a profile may name the hub id)."""
        for m in self.manifests():
            if m.hub_id == hub_id and self.status(m)[0]:
                return m
        return None

    def resolve(self, name: str) -> str:
        """The local directory (or entry file) of a store model; a clear error if absent."""
        m = self.get(name)
        ok, reason = self.status(m)
        if not ok:
            raise ModelUnavailable(f"store model {name!r}: {reason}")
        d = self.directory(m)
        return str(d / m.entry) if m.entry else str(d)

    # -- registration ------------------------------------------------------------------------
    def add(self, name: str, source: str, family: str, mode: str = "copy", hub_id: str = None,
            revision: str = None, licence: str = "unknown", description: str = "",
            entry: str = None, force: bool = False) -> Manifest:
        """Register a local directory (or ``package:...``) and record its hashes."""
        if self.manifest_path(name) is not None and not force:
            raise ValueError(f"model {name!r} already has a manifest ({self.manifest_path(name)}); use --force")
        path_field = None
        if source.startswith("package:"):
            src = package_dir(source)
            path_field, mode = source, "in-place"
        else:
            src = Path(source).expanduser().resolve()
        if src.is_file():  # a single file: keep its name as the entry
            entry = entry or src.name
            files_from = src.parent
            only = [src.name]
            if path_field is not None:
                path_field = path_field.rsplit("/", 1)[0]
        elif src.is_dir():
            files_from, only = src, None
        else:
            raise ModelUnavailable(f"{source}: not a file or directory")
        if mode == "in-place":
            target = files_from
            if path_field is None:
                try:
                    path_field = target.relative_to(resources.root()).as_posix()
                except ValueError:
                    path_field = str(target)
        elif mode in ("copy", "link"):
            target = self.weights_dir / name
            if target.exists() or target.is_symlink():
                if not force:
                    raise ValueError(f"{target} exists; use --force to replace it")
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "link" and only is None:
                target.symlink_to(files_from, target_is_directory=True)
            elif only is None:
                shutil.copytree(files_from, target, ignore=shutil.ignore_patterns(*IGNORED_PARTS))
            else:
                target.mkdir()
                for rel in only:
                    (os.symlink if mode == "link" else shutil.copy2)(files_from / rel, target / rel)
        else:
            raise ValueError(f"mode must be copy, link or in-place, not {mode!r}")
        m = Manifest(name=name, family=family, hub_id=hub_id, revision=revision, path=path_field,
                     entry=entry, licence=licence, description=description,
                     files=hash_directory(target, only))
        self.save(m)
        return m

    def pull(self, name: str, token: typing.Optional[str] = None) -> Manifest:
        """Download a manifest's pinned files from the hub into ``weights/<name>`` and check them.

        An unpinned manifest gets pinned: the resolved commit sha and every file's sha256 are
        written back. Offline (``HF_HUB_OFFLINE=1``) this is an immediate :class:`ModelUnavailable`.
        """
        m = self.get(name)
        if not m.hub_id:
            raise ModelUnavailable(f"{name}: the manifest names no hub_id; nothing to pull (use `models add`)")
        if is_offline():
            raise ModelUnavailable(
                f"{name}: offline (HF_HUB_OFFLINE=1): cannot download {m.hub_id}. Unset HF_HUB_OFFLINE on a "
                f"machine with network, or copy the files to {self.weights_dir / name} and run "
                f"`natix-miner models verify {name}`")
        from huggingface_hub import HfApi, snapshot_download

        try:
            sha = HfApi(token=token).model_info(m.hub_id, revision=m.revision, token=token, timeout=30).sha
            target = self.weights_dir / name
            snapshot_download(repo_id=m.hub_id, revision=sha, local_dir=str(target), token=token,
                              allow_patterns=m.allow_patterns)
        except Exception as exc:  # network, auth (gated repos), missing revision
            raise ModelUnavailable(f"{name}: download of {m.hub_id}@{m.revision or 'main'} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
        m = m.model_copy(update={"path": None})
        if m.files:
            problems = self.verify(name)
            if problems:
                raise ModelUnavailable("downloaded files do not match the manifest:\n" + "\n".join(problems))
            if m.revision != sha:
                m = m.model_copy(update={"revision": sha})
        else:
            m = m.model_copy(update={"revision": sha, "files": hash_directory(target)})
        self.save(m)
        return m


def resolve_model_ref(ref: typing.Optional[str], store: typing.Optional[ModelStore] = None,
                      base: typing.Union[str, Path, None] = None) -> typing.Optional[str]:
    """Local path > store name > hub id > unchanged (see module docstring)."""
    if ref is None:
        return None
    if ref.startswith("package:"):
        return ref
    store = store or ModelStore()
    if ref.startswith("store:"):
        return store.resolve(ref.removeprefix("store:"))
    p = Path(ref).expanduser()
    shipped_root = resources.root()
    candidates = [p] if p.is_absolute() else [p, Path(base or shipped_root) / p, shipped_root / p]
    for c in candidates:
        if c.exists():
            return str(c.resolve())
    if store.has(ref):
        return store.resolve(ref)
    if ref.startswith(("/", "./", "../", "~")) or ("/" in ref and Path(ref).suffix in FILE_SUFFIXES):
        raise ModelUnavailable(f"local path {ref} does not exist (looked in {', '.join(dict.fromkeys(map(str, candidates)))})")
    if HUB_ID.match(ref):
        pulled = store.by_hub_id(ref)  # `natix-miner models pull NAME` put it in the store
        return store.resolve(pulled.name) if pulled is not None else resolve_hub_id(ref)
    return ref


def resolve_hub_id(repo_id: str, revision: typing.Optional[str] = None) -> str:
    """Online: the id itself. Offline: its snapshot in the local HF cache, or a clear error."""
    if not is_offline():
        return repo_id
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=repo_id, revision=revision, local_files_only=True)
    except Exception:
        raise ModelUnavailable(
            f"{repo_id}: not a local path, not in the model store, and not in the Hugging Face cache, and "
            f"this process is offline (HF_HUB_OFFLINE=1). Register it: `natix-miner models add NAME DIR "
            f"--family F --hub-id {repo_id}` or pull it where the hub is reachable.") from None
