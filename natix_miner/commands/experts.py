"""``natix-miner experts list [--json]``: every family, its models, and whether each can load here.

Models come from the model store's manifests (``models/manifests``) and from the experts named in
the shipped profiles (``configs/*.yaml``). "Loadable" is checked without loading anything: the
family's packages are importable, and the model resolves offline (a local path, a present store
entry, or a Hugging Face cache snapshot).

    natix-miner experts list
    natix-miner experts list --json     # [{"family", "model", "source", "loadable", "reason"}, ...]
"""

import json
import typing

from natix_miner.preflight import FAMILY_PACKAGES, missing_packages  # noqa: F401 - re-exported

def add_parser(sub) -> None:
    p = sub.add_parser("experts", help="list expert families and models, and whether each can load here")
    p.add_argument("action", choices=["list"])
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(func=main)


def _model_refs() -> typing.List[typing.Tuple[str, typing.Optional[str], str]]:
    """(family, model ref, source) from the store and the shipped profiles, de-duplicated."""
    from natix_miner.config import CONFIG_DIR, ProfileError, load_profile
    from natix_miner.models_store import ModelStore

    seen: typing.Dict[typing.Tuple[str, typing.Optional[str]], str] = {}
    for m in ModelStore().manifests():
        seen.setdefault((m.family, m.name), "store")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            prof = load_profile(path)
        except ProfileError:
            continue
        for e in prof.experts:
            if e.family == "timm":  # model is an architecture name; the files are weights / head
                ref = e.options.get("weights") or e.options.get("head")
                ref = ref if ref else None
            else:
                ref = e.model or e.options.get("head") or e.options.get("weights")
            seen.setdefault((e.family, ref), f"profile:{path.stem}")
    return [(f, m, src) for (f, m), src in seen.items()]


def check(family: str, ref: typing.Optional[str]) -> typing.Tuple[bool, str]:
    from natix_miner.experts import FAMILIES
    from natix_miner.models_store import ModelUnavailable, resolve_model_ref

    if family not in FAMILIES:
        return False, f"unknown family {family!r}"
    missing = missing_packages(family)
    if missing:
        return False, f"missing package(s): {', '.join(missing)}"
    if ref is None or ref.startswith("package:"):
        return True, "ok"
    if family == "openai_vlm" or ref.startswith(("http://", "https://")):
        return True, "remote endpoint (reachability checked at start)"
    try:
        resolve_model_ref(ref)
    except ModelUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # a broken manifest or cache must not break the listing
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


def rows() -> typing.List[dict]:
    from natix_miner.experts import FAMILIES

    out = []
    refs = _model_refs()
    for family in FAMILIES:
        models = [(m, src) for f, m, src in refs if f == family] or [(None, "-")]
        for model, src in models:
            ok, reason = check(family, model)
            row = {"family": family, "model": model, "source": src, "loadable": ok}
            if not ok:
                row["reason"] = reason
            out.append(row)
    return out


def main(args) -> int:
    from natix_miner.offline import enforce_offline

    enforce_offline()
    data = rows()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    w = max(len(r["family"]) for r in data)
    wm = min(60, max(len(str(r["model"])) for r in data))
    print(f"{'family':<{w}}  {'model':<{wm}}  loadable  reason / source")
    for r in data:
        note = r.get("reason", r["source"])
        print(f"{r['family']:<{w}}  {str(r['model'])[:wm]:<{wm}}  {'yes' if r['loadable'] else 'no ':<8}  {note}")
    return 0
