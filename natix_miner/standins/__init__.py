"""Stand-in weights: every expert of a profile with its true architecture and random weights.

For capacity planning and testing before any download or training. ``natix-miner models stand-in``
writes, per expert, a checkpoint in the exact layout its family loads (timm safetensors, ultralytics
``.pt``, rfdetr checkpoint, transformers directories with processor and tokenizer, ``.npz`` heads, VLM
directories) and ``DIR/stand-ins.json``. Any command that loads a profile then runs on them with
``--stand-ins DIR`` (or ``NATIX_STAND_INS=DIR``); ``--device cpu`` (``NATIX_DEVICE=cpu``) puts every
expert and replica on the CPU. Both are applied in one place, :func:`natix_miner.config.load_profile`,
through :func:`apply`.

Scales: ``full`` is the named model's real architecture (configs in ``natix_miner/standins/archs/*.json``:
hidden sizes, depths, patch sizes); ``tiny`` shrinks widths and depths (and uses the smallest variant of
timm / ultralytics / rfdetr families) so the whole ``h100x2`` profile loads and answers on two CPU cores.

Usage::

    natix-miner models stand-in h100x2 --scale tiny --out stand-ins
    natix-miner predict bus.jpg --profile h100x2 --stand-ins stand-ins --all-tiers --device cpu

    from natix_miner.standins import apply
    profile = apply(load_profile("h100x2"), stand_ins="stand-ins", device="cpu")

``stand-ins.json``::

    {"profile": "h100x2", "scale": "tiny", "experts": {
       "convnextv2": {"stands_in_for": "convnextv2_large", "arch": "convnextv2_large", "params": 3388604,
                      "overrides": {"model": "convnextv2_atto", "options": {"weights": "convnextv2/model.safetensors"}}},
       "ocr": {"packaged": "rapidocr-onnxruntime ships its real PP-OCR models", "overrides": {}}, ...}}

On a CPU device the ``vllm`` family (vLLM is a GPU engine here; the main environment has no vLLM) runs
through the transformers backend, family ``hf_vlm``, on the same directory: the same prompt, answer
tokens and P(yes); the ``engine`` options are dropped, with a warning.
"""

import copy
import json
import logging
import typing
from pathlib import Path

log = logging.getLogger("natix_miner.standins")

MANIFEST = "stand-ins.json"
# expert option keys that hold file paths (relative to the stand-ins directory in the manifest)
PATH_OPTIONS = ("weights", "head")


class StandInError(ValueError):
    """Stand-ins cannot be built or applied; the message names the fix."""


def read_manifest(directory: typing.Union[str, Path]) -> dict:
    """``DIR/stand-ins.json`` as written by :func:`natix_miner.standins.build.build_profile`."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StandInError(f"no {MANIFEST} in {directory}: write it with "
                           f"`natix-miner models stand-in PROFILE --scale tiny --out {directory}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StandInError(f"{path}: not valid JSON ({exc}); rebuild it with `natix-miner models stand-in`") from None
    if not isinstance(data, dict) or not isinstance(data.get("experts"), dict):
        raise StandInError(f"{path}: no 'experts' mapping; rebuild it with `natix-miner models stand-in`")
    return data


def _merge(base: dict, over: typing.Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _absolute(overrides: dict, root: Path) -> dict:
    """Manifest paths are relative to the stand-ins directory; make them absolute."""
    out = copy.deepcopy(overrides)
    model = out.get("model")
    if isinstance(model, str) and (root / model).exists():
        out["model"] = str(root / model)
    for key in PATH_OPTIONS:
        value = (out.get("options") or {}).get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            out["options"][key] = str(root / value)
    return out


def vllm_as_hf(spec: dict, dtype: typing.Optional[str] = None, where: str = "on the CPU") -> dict:
    """One ``vllm`` expert (as a dict) as the transformers backend runs it: family ``hf_vlm`` on the same
    model directory (same prompt, answer tokens and P(yes)), ``options.engine`` dropped, with a warning.
    ``dtype`` (e.g. ``bfloat16``) replaces the expert's; without it fp8 / int8 become ``auto`` (the
    checkpoint's own). Other families are returned unchanged.

        vllm_as_hf({"name": "qwen", "family": "vllm", "dtype": "auto", ...}, dtype="bfloat16", where="on the card")
    """
    if spec.get("family") != "vllm":
        return spec
    spec = copy.deepcopy(spec)
    options = dict(spec.get("options") or {})
    dropped = options.pop("engine", None)
    spec["options"] = options
    spec["family"] = "hf_vlm"
    if dtype:
        spec["dtype"] = dtype
    elif spec.get("dtype") in ("fp8", "int8"):
        spec["dtype"] = "auto"
    log.warning("expert %s: family vllm %s runs through the transformers backend (hf_vlm, dtype %s)%s",
                spec.get("name"), where, spec.get("dtype"), "; options.engine dropped" if dropped else "")
    return spec


def on_cpu(spec: dict) -> dict:
    """One expert (as a dict) with every replica on the CPU; ``vllm`` becomes ``hf_vlm`` (see module doc)."""
    spec = copy.deepcopy(spec)
    n = len(spec["devices"]) if spec.get("devices") else int(spec.get("replicas") or 1)
    spec["device"] = "cpu"
    spec["devices"] = None
    spec["replicas"] = n
    return vllm_as_hf(spec)


def on_device(spec: dict, device: str) -> dict:
    """Every replica of one expert on ``device`` (``cpu`` also maps the vllm family, see :func:`on_cpu`)."""
    if device == "cpu":
        return on_cpu(spec)
    spec = copy.deepcopy(spec)
    n = len(spec["devices"]) if spec.get("devices") else int(spec.get("replicas") or 1)
    spec["device"], spec["devices"], spec["replicas"] = device, None, n
    return spec


def apply_data(data: dict, stand_ins: typing.Optional[typing.Union[str, Path]] = None,
               device: typing.Optional[str] = None) -> dict:
    """The transform on a profile's raw mapping (before validation), used by ``load_profile``."""
    data = copy.deepcopy(data)
    experts = [e for e in data.get("experts") or [] if isinstance(e, dict)]
    if stand_ins:
        root = Path(stand_ins).resolve()
        manifest = read_manifest(root)
        entries = manifest["experts"]
        missing = [e.get("name") for e in experts if e.get("name") not in entries]
        if missing:
            raise StandInError(f"{root / MANIFEST} has no stand-in for {', '.join(map(str, missing))} (built for "
                               f"profile {manifest.get('profile')!r}); run `natix-miner models stand-in "
                               f"{data.get('name', 'PROFILE')} --out {stand_ins}`")
        for e in experts:
            entry = entries[e["name"]]
            if entry.get("stands_in_for") != e.get("model") or entry.get("family", e.get("family")) != e.get("family"):
                raise StandInError(f"{root / MANIFEST}: {e['name']} stands in for {entry.get('family')} "
                                   f"{entry.get('stands_in_for')!r}, the profile has {e.get('family')} {e.get('model')!r}; "
                                   f"rebuild with `natix-miner models stand-in {data.get('name', 'PROFILE')} --out {stand_ins}`")
            e.update(_merge(e, _absolute(entry.get("overrides") or {}, root)))
        data.setdefault("description", "")
        data["description"] = f"{data['description']} [stand-ins: {manifest.get('scale')} from {root}]".strip()
    if device:
        data["experts"] = [on_device(e, device) if isinstance(e, dict) else e for e in data.get("experts") or []]
    return data


def apply(profile, stand_ins: typing.Optional[typing.Union[str, Path]] = None, device: typing.Optional[str] = None):
    """A validated :class:`~natix_miner.config.Profile` with stand-ins and/or a device applied."""
    from natix_miner.config import Profile

    data = profile.model_dump(round_trip=True)
    data["path"] = profile.path
    return Profile.model_validate(apply_data(data, stand_ins, device))


# -- command-line flags (every command that loads a profile) ------------------------------------------
# (flag, dest, metavar, environment variable, what it does): the parsers and the README's settings table
PROFILE_FLAGS = (
    ("--stand-ins", "stand_ins", "DIR", "NATIX_STAND_INS",
     "load every expert from the stand-in weights in DIR (`natix-miner models stand-in`)"),
    ("--device", "device", "DEVICE", "NATIX_DEVICE",
     "put every expert and replica on DEVICE (cpu, cuda, cuda:N); on cpu the vllm family runs through hf_vlm"),
)


def add_arguments(parser) -> None:
    """``--stand-ins DIR`` and ``--device D`` on a command's parser; :func:`use_arguments` applies them."""
    for flag, dest, metavar, env, help_ in PROFILE_FLAGS:
        parser.add_argument(flag, dest=dest, default=None, metavar=metavar, help=f"{help_} (env {env})")


def use_arguments(args) -> None:
    """Check ``--stand-ins`` / ``--device`` and export them as ``NATIX_STAND_INS`` / ``NATIX_DEVICE``, so
    ``load_profile`` here and in child processes (spawned miners, isolated experts) applies them.
    Raises :class:`StandInError` with the fix."""
    import os
    import re

    from natix_miner.config import DEVICE_PATTERN

    stand_ins = getattr(args, "stand_ins", None)
    device = getattr(args, "device", None)
    if stand_ins:
        read_manifest(stand_ins)
        os.environ["NATIX_STAND_INS"] = str(Path(stand_ins).resolve())
    if device:
        if not re.match(DEVICE_PATTERN, device) or device == "auto":
            raise StandInError(f"--device {device!r}: expected cpu, cuda or cuda:N")
        os.environ["NATIX_DEVICE"] = device


def apply_cli(args) -> int:
    """:func:`use_arguments` for a command's ``main``: 0, or 2 after one ``error: ...`` line on stderr."""
    import sys

    try:
        use_arguments(args)
    except StandInError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
