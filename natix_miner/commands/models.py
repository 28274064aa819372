"""``natix-miner models list|verify|add|pull``: the local model store (``natix_miner/models_store.py``).

    natix-miner models list [--json]                       # every manifest, present on disk or not
    natix-miner models verify [NAME ...]                   # pinned or not, per model; recompute the sha256s
                                                           # of present ones; exit 1 on any mismatch
    natix-miner models add NAME DIR --family F [--hub-id ORG/NAME] [--licence L] [--mode copy|link|in-place]
    natix-miner models add NAME package:rapidocr_onnxruntime/models --family ocr
    natix-miner models pull NAME [--token T]               # snapshot_download (needs network + HF token
                                                           # for gated repos), pins revision + hashes
    natix-miner models stand-in PROFILE --scale tiny|full --out DIR [--device cpu]
                                                           # every expert's architecture, random weights,
                                                           # + DIR/stand-ins.json (natix_miner/standins)
"""

import json
import os
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="the local model store: list, verify, add, pull")
    p.add_argument("--root", default=None, help="store root (default: $NATIX_MODEL_DIR or <repo>/models)")
    act = p.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    ls = act.add_parser("list", help="list manifests and whether their files are here")
    ls.add_argument("--json", action="store_true")
    v = act.add_parser("verify", help="say how each model is pinned; recompute sha256 of present files")
    v.add_argument("names", nargs="*", help="models to verify (default: every manifest)")
    a = act.add_parser("add", help="register a local directory or file and hash it")
    a.add_argument("name")
    a.add_argument("source", help="directory, file, or package:PKG/SUBDIR")
    a.add_argument("--family", required=True, help="expert family that loads it (hf_classifier, timm, ...)")
    a.add_argument("--hub-id", default=None)
    a.add_argument("--revision", default=None)
    a.add_argument("--licence", default="unknown")
    a.add_argument("--description", default="")
    a.add_argument("--entry", default=None, help="file inside the directory that profiles resolve to")
    a.add_argument("--mode", choices=["copy", "link", "in-place"], default="copy",
                   help="copy into weights/NAME (default), symlink it, or record the path as it is")
    a.add_argument("--force", action="store_true", help="replace an existing manifest / directory")
    pl = act.add_parser("pull", help="download a manifest's files from the hub (online only)")
    pl.add_argument("names", nargs="+")
    pl.add_argument("--token", default=None, help="Hugging Face token (default: $HF_TOKEN / cached login)")
    si = act.add_parser("stand-in", help="write stand-in weights for every expert of a profile (random weights, "
                                         "true architectures) and DIR/stand-ins.json; use with --stand-ins DIR")
    si.add_argument("profile", help="profile name (configs/NAME.yaml) or path")
    si.add_argument("--scale", choices=["tiny", "full"], default="tiny",
                    help="full: the named models' real sizes; tiny: shrunk to run on a CPU (default)")
    si.add_argument("--out", required=True, help="output directory")
    si.add_argument("--device", default="cpu", help="where weights are initialised (cpu, cuda:N); saved to disk either way")
    p.set_defaults(func=main)


def _stand_in_row(name: str, entry: dict) -> None:
    size = f"{entry['params'] / 1e6:,.1f} M params" if "params" in entry else entry.get("packaged", "")
    print(f"{name:<18} {entry.get('arch', entry['family']):<30} {size}", flush=True)


def _stand_in(args) -> int:
    from natix_miner.config import ProfileError, load_profile
    from natix_miner.offline import enforce_offline
    from natix_miner.standins import StandInError
    from natix_miner.standins.build import build_profile

    enforce_offline()  # tokenizers are trained locally; nothing comes from a hub
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")  # library chatter about random weights is expected here
    for name in ("transformers", "rf-detr", "rfdetr"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        profile = load_profile(args.profile, stand_ins=False, device=False)  # the profile as written
        if args.scale == "full":
            from natix_miner.standins.build import estimate_bytes, size_text

            print(f"full-size stand-ins of {profile.name}: about {size_text(estimate_bytes(profile, 'full'))} "
                  f"to write under {args.out}", flush=True)
        path = build_profile(profile, args.scale, args.out, device=args.device, progress=_stand_in_row)
    except (ProfileError, StandInError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.scale}); use it with --stand-ins {args.out}")
    return 0


def _list(store, as_json: bool) -> int:
    rows = []
    for m in store.manifests():
        present, reason = store.status(m)
        row = {"name": m.name, "family": m.family, "hub_id": m.hub_id, "revision": m.revision,
               "licence": m.licence, "size_bytes": m.size_bytes, "pinned": m.pinned,
               "present": present, "reason": reason, "path": str(store.directory(m)) if present else None}
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no manifests under {store.root}")
        return 0
    print(f"{'name':<28} {'family':<14} {'size':>10} {'licence':<16} status")
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f}MB" if r["size_bytes"] else "-"
        pin = "" if r["pinned"] else " [unpinned]"
        print(f"{r['name']:<28} {r['family']:<14} {size:>10} {r['licence'][:16]:<16} {r['reason']}{pin}")
    return 0


def pin_text(m) -> str:
    """``sha256 (3 files)``, ``revision 1a2b3c4d5e6f`` or ``unpinned``."""
    if m.pin == "sha256":
        return f"sha256 ({len(m.files)} file{'s' if len(m.files) != 1 else ''})"
    if m.pin == "revision":
        return f"revision {m.revision[:12]}"
    return "unpinned"


def _verify(store, names) -> int:
    """One line per model: its pin, then ok / the problems (present models are re-hashed) or
    absent. Exit 1 when a present model fails (a hash mismatch, a missing file, no hash at all)."""
    manifests = [store.get(n) for n in names] if names else store.manifests()
    bad = 0
    w = max([len(m.name) for m in manifests] + [4])
    for m in manifests:
        present, reason = store.status(m)
        pin = pin_text(m)
        if not present:
            fix = f"`natix-miner models pull {m.name}` pins and fetches it" if m.hub_id and not m.pinned else reason
            print(f"{m.name:<{w}}  {pin:<20}  absent: {fix}")
            continue
        problems = store.verify(m.name)
        bad += bool(problems)
        if problems:
            print(f"{m.name:<{w}}  {pin:<20}  FAILED")
            print("\n".join("  " + p for p in problems))
        elif m.pin == "sha256":
            print(f"{m.name:<{w}}  {pin:<20}  ok: every sha256 matches")
        else:
            print(f"{m.name:<{w}}  {pin:<20}  present (no file hashes recorded to compare)")
    by = {k: sum(1 for m in manifests if m.pin == k) for k in ("sha256", "revision")}
    print(f"{by['sha256'] + by['revision']} of {len(manifests)} pinned ({by['sha256']} by sha256, "
          f"{by['revision']} by commit revision), {len(manifests) - by['sha256'] - by['revision']} unpinned; "
          f"{bad} failed verification")
    return 1 if bad else 0


def main(args) -> int:
    from natix_miner.models_store import ModelStore, ModelUnavailable

    if args.models_action == "stand-in":
        return _stand_in(args)
    store = ModelStore(args.root)
    try:
        if args.models_action == "list":
            return _list(store, args.json)
        if args.models_action == "verify":
            return _verify(store, args.names)
        if args.models_action == "add":
            m = store.add(args.name, args.source, args.family, mode=args.mode, hub_id=args.hub_id,
                          revision=args.revision, licence=args.licence, description=args.description,
                          entry=args.entry, force=args.force)
            print(f"added {m.name}: {len(m.files)} files, {m.size_bytes / 1e6:.1f} MB -> {store.manifest_path(m.name)}")
            return 0
        if args.models_action == "pull":
            for name in args.names:
                m = store.pull(name, token=args.token)
                print(f"pulled {m.name} {m.hub_id}@{m.revision}: {len(m.files)} files, {m.size_bytes / 1e6:.1f} MB")
            return 0
    except (ModelUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2
