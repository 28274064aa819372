"""Before anything loads: which models of a profile are not on this machine, and which tiers would
be left without an expert.

Each expert's model references are checked the way its family resolves them when it loads (local
path > store name > hub id in the store or the local Hugging Face cache; ``natix_miner/models_store.py``),
without loading anything and without the network when offline. A missing model is ONE line that
names the fix::

    natix_vit [tier fast, hf_classifier] natix-network-org/roadwork: not in the model store or the
      Hugging Face cache; fix: `natix-miner models pull natix-roadwork-vit`, or --stand-ins DIR ...

The engine runs :func:`missing_models` at start (a missing model fails its expert at once, it never
waits on a hub), and ``run`` / ``predict`` / ``evaluate`` refuse a start where :func:`empty_tiers`
is not empty (``--allow-degraded`` serves anyway, loudly). ``profile validate --check-models``
prints the same lines.

Usage::

    from natix_miner.preflight import missing_models, empty_tiers, degraded_report
    for m in missing_models(profile):
        print(m.line())
    empty_tiers(profile, loaded={"ocr"})          # {"fast": ["natix_vit", ...], "vlm": [...]}
"""

import dataclasses
import importlib.util
import re
import typing
from pathlib import Path

from natix_miner.config import ExpertSpec, Profile
from natix_miner.experts import family_packages, model_is_file

# Each family declares on its Options (natix_miner/experts/) the packages it needs beyond the core
# install (``packages``) and whether its ``model:`` is a file reference (``model_is_file``).
STAND_IN_FIX = "--stand-ins DIR (`natix-miner models stand-in PROFILE --out DIR`: random weights, same architecture)"


@dataclasses.dataclass
class Ref:
    """One file reference an expert needs: ``role`` is model / weights / head / detector / depth_check."""

    role: str
    ref: str
    family: str


@dataclasses.dataclass
class MissingModel:
    """An expert's model that cannot load here, with the command that fixes it."""

    expert: str
    tier: typing.Optional[str]
    family: str
    ref: str
    reason: str
    fix: str

    def line(self) -> str:
        where = f"tier {self.tier}, {self.family}" if self.tier else self.family
        return f"{self.expert} [{where}] {self.ref}: {self.reason}; fix: {self.fix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def missing_packages(family: str) -> typing.List[str]:
    """Modules ``family`` imports that are not installed here."""
    return [m for m in family_packages(family) if importlib.util.find_spec(m) is None]


def expert_refs(spec: ExpertSpec, profile: typing.Optional[Profile] = None,
                _seen: typing.Optional[set] = None) -> typing.List[Ref]:
    """The references ``spec``'s family resolves when it loads (built-in families only; others
    report their own load errors): ``model:`` (not for timm, whose
    model is an architecture name), ``options.weights`` / ``options.head`` files, and the models of
    the experts a ``depth`` expert (``options.detector``) or a detector (``options.depth_check``)
    borrows from the profile."""
    seen = _seen if _seen is not None else set()
    seen.add(spec.name)
    out: typing.List[Ref] = []
    if not family_packages(spec.family):  # wrappers (chaos, isolated) and families registered elsewhere
        return out
    if spec.model and model_is_file(spec.family) and not spec.model.startswith(("http://", "https://")):
        out.append(Ref("model", spec.model, spec.family))
    for key in ("weights", "head"):
        value = spec.options.get(key)
        if isinstance(value, str) and value:
            out.append(Ref(key, value, spec.family))
    for key in ("detector", "depth_check"):
        value = spec.options.get(key)
        if not isinstance(value, str) or not value:
            continue
        other = _expert(profile, value)
        if other is not None:
            if other.name not in seen:
                out += [Ref(key, r.ref, r.family) for r in expert_refs(other, profile, seen)]
        elif key == "depth_check":  # a depth model path or id
            out.append(Ref(key, value, "depth"))
    return out


def _expert(profile: typing.Optional[Profile], name: str) -> typing.Optional[ExpertSpec]:
    if profile is None:
        return None
    try:
        return profile.expert(name)
    except KeyError:
        return None


def check_ref(ref: Ref, base: typing.Optional[Path] = None) -> typing.Optional[str]:
    """``None`` when ``ref`` resolves here (offline: without the network), else why not."""
    from natix_miner.models_store import ModelUnavailable, resolve_model_ref

    try:
        path = resolve_model_ref(ref.ref, base=base)
        if ref.family == "ultralytics" and path and not path.startswith("package:"):
            from natix_miner.experts.ultralytics_det import resolve_ultralytics_model

            resolve_ultralytics_model(path)
    except ModelUnavailable as exc:
        return _short_reason(ref.ref, str(exc))
    return None


def _short_reason(ref: str, message: str) -> str:
    if "not in the Hugging Face cache" in message or "not a local path, not in the model store" in message:
        return "not found" if _path_like(ref) else "not in the model store or the Hugging Face cache"
    if "does not exist" in message and ("local path" in message or "files absent" in message):
        return "file not found" if "local path" in message else "store files absent"
    if "not found locally" in message:
        return "file not found"
    return message.split("\n")[0]


def fix_for(ref: Ref, spec: ExpertSpec) -> str:
    """The command(s) that make ``ref`` present, ending with the stand-in alternative."""
    from natix_miner.models_store import HUB_ID, ModelStore

    store = ModelStore()
    name = ref.ref.removeprefix("store:")
    fixes: typing.List[str] = []
    if store.has(name):
        m = store.get(name)
        fixes.append(f"`natix-miner models pull {name}`" if m.hub_id
                     else f"`natix-miner models add {name} DIR --family {m.family} --force`")
    elif HUB_ID.match(ref.ref) and not _path_like(ref.ref):
        known = [m for m in store.manifests() if m.hub_id == ref.ref]
        if known:
            fixes.append(f"`natix-miner models pull {known[0].name}`")
        else:
            fixes.append(f"`natix-miner models add NAME DIR --family {ref.family} --hub-id {ref.ref}` "
                         f"with the files, or run once with --allow-downloads")
    else:
        target = Path(ref.ref)
        out_dir = target.parent if target.suffix else target
        if ref.family in ("timm", "hf_classifier") and ref.role in ("weights", "model"):
            arch = spec.model if spec.family == "timm" else "MODEL_DIR"
            fixes.append(f"`natix-miner train --data DATA --family {ref.family} --arch {arch} --out {out_dir}` "
                         f"(then point the profile at its best weights)")
        elif ref.family == "ultralytics":
            found = re.match(r"(rtdetr-[a-z]|yolo[0-9]+[a-z]?)", out_dir.name.lower())
            yaml = f"{found.group(1)}.yaml" if found else "yolo11n.yaml"
            fixes.append(f"`natix-miner train-detector --coco COCO.json --model {yaml} --out {out_dir}`")
        elif ref.role == "head":
            fixes.append(f"fit the head and write it to {ref.ref} (natix_miner/experts/dino_head.py save_head)")
        else:
            fixes.append(f"put the files at {ref.ref}")
    return ", or ".join(fixes + [STAND_IN_FIX])


def _path_like(ref: str) -> bool:
    """A file path rather than a hub id (``models/x-roadwork`` names the repo's models/ folder)."""
    from natix_miner.config import REPO_ROOT
    from natix_miner.models_store import FILE_SUFFIXES

    return (ref.startswith(("/", "./", "../", "~")) or ("/" in ref and Path(ref).suffix in FILE_SUFFIXES)
            or ("/" in ref and (REPO_ROOT / ref.split("/")[0]).is_dir()))


def _tier_of(profile: Profile) -> typing.Dict[str, str]:
    return {name: tier.name for tier in profile.tiers for name in tier.experts}


def missing_for(spec: ExpertSpec, profile: Profile) -> typing.List[MissingModel]:
    """Every reason ``spec`` cannot load here (missing packages, then each missing model)."""
    tier = _tier_of(profile).get(spec.name)
    base = Path(profile.path).parent if profile.path else None
    pkgs = missing_packages(spec.family)
    if pkgs:
        return [MissingModel(spec.name, tier, spec.family, spec.model or "-",
                             f"package(s) not installed: {', '.join(pkgs)}",
                             "pip install -e \".[gpu]\" (GPU hosts) or install " + " ".join(pkgs))]
    out = []
    for ref in expert_refs(spec, profile):
        reason = check_ref(ref, base)
        if reason is not None:
            out.append(MissingModel(spec.name, tier, ref.family, ref.ref, reason, fix_for(ref, spec)))
    return out


def missing_models(profile: Profile, skip: typing.Iterable[str] = ()) -> typing.List[MissingModel]:
    """:func:`missing_for` over every expert a tier uses (``skip``: experts given ready-made)."""
    skipped = set(skip)
    out: typing.List[MissingModel] = []
    for spec in profile.tiered_experts:
        if spec.name not in skipped:
            out += missing_for(spec, profile)
    return out


def empty_tiers(profile: Profile, loaded: typing.Iterable[str]) -> typing.Dict[str, typing.List[str]]:
    """Tiers none of whose experts is in ``loaded``: tier -> its experts (in profile order)."""
    have = set(loaded)
    return {t.name: list(t.experts) for t in profile.tiers if not have.intersection(t.experts)}


def degraded_report(empty: typing.Mapping[str, typing.Sequence[str]], errors: typing.Mapping[str, str],
                    missing: typing.Iterable[str] = ()) -> typing.List[str]:
    """The lines every command prints for a degraded start: one per empty tier, plus the load error
    of each expert in it that failed for another reason than a missing model (those have their
    own line already)."""
    absent = set(missing)
    lines = []
    for tier, names in empty.items():
        lines.append(f"tier {tier} has no loadable expert: {', '.join(names)}")
        for n in names:
            if n not in absent:
                lines.append(f"  {n}: {errors.get(n, 'not loaded')}")
    return lines


class DegradedStart(RuntimeError):
    """A tier has no loadable expert and ``--allow-degraded`` was not given; ``lines`` is the report."""

    def __init__(self, lines: typing.Sequence[str]):
        super().__init__("; ".join(ln.strip() for ln in lines))
        self.lines = list(lines)


def check_degraded(engine, allow: bool = False) -> typing.List[str]:
    """The started engine's degraded report (empty when every tier has a loaded expert); raises
    :class:`DegradedStart` when there is one and ``allow`` is false."""
    report = getattr(engine, "degraded_report", None)
    lines = report() if callable(report) else []
    if lines and not allow:
        raise DegradedStart(lines)
    return lines


def degraded_message(lines: typing.Sequence[str], allow: bool = False) -> str:
    """The report as a command prints it on stderr (``error:`` lines, or ``warning:`` when allowed)."""
    prefix = "warning: answering degraded: " if allow else "error: "
    out = [ln if ln.startswith("  ") else prefix + ln for ln in lines]
    if lines and not allow:
        out.append("error: fix the models named above, or pass --allow-degraded to answer anyway")
    return "\n".join(out)
