"""``natix-miner data validate``: what is wrong with a dataset before it trains anything.

Checks, each listed in the report with the files concerned:

* **corrupt** - the miner's own decoder (:mod:`natix_miner.imaging.decode`) refuses the image
  (truncated, not an image, decompression bomb, ...) - *error*;
* **bad labels** - missing or not 0/1 in a labelled set - *error*;
* **conflicting duplicates** - the same picture (perceptual hash within ``max_distance``) with
  both labels - *error*;
* **near-duplicates** - same label, same picture (they leak between train and validation splits) -
  *warning*;
* **label balance** - counts per label; one class missing is an *error*, a minority share under
  ``min_share`` a *warning*;
* **sizes** - width / height / aspect distribution and formats; images smaller than ``min_side``
  pixels are a *warning*.

Errors make the command exit 1 (``--strict``: warnings too). ``--json PATH`` writes the report.

Usage::

    natix-miner data validate data/roadwork --json report.json
    from natix_miner.training.validate import validate_samples
    report = validate_samples(samples)       # report["errors"], report["warnings"], ...
"""

import collections
import typing

import numpy as np

from natix_miner.stats import percentile
from natix_miner.training.datasets import Sample


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Bits set per uint64 (vectorised)."""
    x = x.astype(np.uint64)
    out = np.zeros(x.shape, dtype=np.uint8)
    for shift in range(0, 64, 8):
        out += _POP8[((x >> np.uint64(shift)) & np.uint64(0xFF)).astype(np.uint8)]
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 512) -> typing.List[typing.Tuple[int, int, int]]:
    """Pairs ``(i, j, hamming)`` with ``i < j`` whose 64-bit hashes differ in at most ``max_distance`` bits."""
    n = len(hashes)
    out = []
    for a in range(0, n, chunk):
        block = hashes[a:a + chunk]
        d = _popcount64(block[:, None] ^ hashes[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        for i, j in zip(ii.tolist(), jj.tolist()):
            gi = a + i
            if gi < j:
                out.append((gi, j, int(d[i, j])))
    return out


def _groups(n: int, pairs: typing.Iterable[typing.Tuple[int, int, int]]) -> typing.List[typing.List[int]]:
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[rj] = ri
    groups: typing.Dict[int, typing.List[int]] = collections.defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def _stats(values: typing.Sequence[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)  # nearest-rank percentiles: values that occur
    return {"min": float(a.min()), "p5": percentile(a, 5), "median": percentile(a, 50),
            "p95": percentile(a, 95), "max": float(a.max())}


def validate_samples(samples: typing.Sequence[Sample], max_distance: int = 4, min_share: float = 0.3,
                     min_side: int = 64, labelled: bool = True, progress: bool = True,
                     max_examples: int = 20) -> dict:
    """Check every image; return the report (``errors`` and ``warnings`` are lists of strings)."""
    import imagehash
    from tqdm import tqdm

    from natix_miner.imaging.decode import ImageError, decode_bytes

    corrupt: typing.List[dict] = []
    hashes: typing.List[int] = []
    hashed: typing.List[int] = []  # sample index of each hash
    widths, heights, aspects = [], [], []
    formats: typing.Counter[str] = collections.Counter()
    small: typing.List[str] = []
    for idx, s in enumerate(tqdm(samples, desc="validate", unit="img", disable=not progress)):
        try:
            img = decode_bytes(s.bytes(), eager=True)
        except ImageError as exc:
            corrupt.append({"key": s.key, "reason": exc.reason, "detail": str(exc)})
            continue
        except Exception as exc:  # unreadable file, broken parquet cell
            corrupt.append({"key": s.key, "reason": type(exc).__name__, "detail": str(exc)})
            continue
        w, h = img.width, img.height
        widths.append(w)
        heights.append(h)
        aspects.append(w / h)
        formats[img.format] += 1
        if min(w, h) < min_side:
            small.append(s.key)
        ph = imagehash.phash(img.pil())
        hashes.append(int(str(ph), 16))
        hashed.append(idx)

    counts = collections.Counter("roadwork" if s.label == 1 else "none" if s.label == 0 else "missing"
                                 for s in samples)
    by_source = collections.Counter(s.source for s in samples)
    H = np.array(hashes, dtype=np.uint64)
    pairs = near_duplicate_pairs(H, max_distance) if len(H) > 1 else []
    groups = [[hashed[i] for i in g] for g in _groups(len(H), pairs)]
    conflicting = [g for g in groups if len({samples[i].label for i in g if samples[i].label is not None}) > 1]
    same_label = [g for g in groups if g not in conflicting]

    errors: typing.List[str] = []
    warnings: typing.List[str] = []
    if corrupt:
        errors.append(f"{len(corrupt)} corrupt or unreadable image(s), e.g. "
                      + ", ".join(f"{c['key']} ({c['reason']})" for c in corrupt[:3]))
    if labelled:
        if counts.get("missing"):
            errors.append(f"{counts['missing']} image(s) without a 0/1 label")
        labelled_n = counts.get("roadwork", 0) + counts.get("none", 0)
        if labelled_n and (counts.get("roadwork", 0) == 0 or counts.get("none", 0) == 0):
            errors.append(f"only one class present (roadwork {counts.get('roadwork', 0)}, none {counts.get('none', 0)})")
        elif labelled_n:
            share = min(counts.get("roadwork", 0), counts.get("none", 0)) / labelled_n
            if share < min_share:
                warnings.append(f"label imbalance: minority class is {share:.1%} of the data "
                                f"(train uses class weights; the validator draws 50/50)")
    if conflicting:
        errors.append(f"{len(conflicting)} group(s) of near-identical images with conflicting labels, e.g. "
                      + "; ".join(" = ".join(samples[i].key for i in g[:3]) for g in conflicting[:3]))
    if same_label:
        dup = sum(len(g) - 1 for g in same_label)
        warnings.append(f"{dup} near-duplicate image(s) in {len(same_label)} group(s) "
                        f"(phash distance <= {max_distance}); they leak across train/validation splits")
    if small:
        warnings.append(f"{len(small)} image(s) smaller than {min_side}px on a side, e.g. {small[:3]}")

    def ex(gs):
        return [[{"key": samples[i].key, "label": samples[i].label} for i in g] for g in gs[:max_examples]]

    return {
        "n": len(samples),
        "decoded": len(hashes),
        "labels": dict(counts),
        "sources": dict(by_source),
        "corrupt": corrupt,
        "near_duplicates": {"max_distance": max_distance, "groups": len(same_label),
                            "images": sum(len(g) for g in same_label), "examples": ex(same_label)},
        "conflicting_duplicates": {"groups": len(conflicting), "examples": ex(conflicting)},
        "sizes": {"width": _stats(widths), "height": _stats(heights), "aspect": _stats(aspects),
                  "formats": dict(formats), "smaller_than_min_side": len(small)},
        "errors": errors,
        "warnings": warnings,
        "ok": not errors,
    }


def format_validation(r: dict) -> str:
    """The dataset check of :func:`validate_samples` as text: counts, sizes, duplicates, errors, verdict."""
    lines = [f"images: {r['n']} (decoded {r['decoded']}), labels: {r['labels']}, sources: {r['sources']}"]
    sz = r["sizes"]
    if sz.get("width"):
        lines.append(f"width  min {sz['width']['min']:.0f} median {sz['width']['median']:.0f} max {sz['width']['max']:.0f}; "
                     f"height min {sz['height']['min']:.0f} median {sz['height']['median']:.0f} "
                     f"max {sz['height']['max']:.0f}; formats {sz['formats']}")
    lines.append(f"near-duplicate groups: {r['near_duplicates']['groups']}, conflicting: "
                 f"{r['conflicting_duplicates']['groups']}, corrupt: {len(r['corrupt'])}")
    for e in r["errors"]:
        lines.append(f"ERROR: {e}")
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    lines.append("ok" if r["ok"] else "FAILED: fix the errors above")
    return "\n".join(lines)
