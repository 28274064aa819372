"""Where the shipped, read-only files are, and where the writable model store is.

Shipped with natix-miner (read-only; the same files in a checkout and in an installed package):

    configs/*.yaml, configs/*.consensus.json   the profiles and their fitted consensus
    models/manifests/*.json, models/cards/*.md the committed model manifests and cards
    models/demo/*                              the demo profile's checkpoints (and the older fitted head)
    models/README.md

They are found under one **root**, the first of:

1. ``$NATIX_ROOT``: an explicit root (a checkout, or a copy holding ``configs/``); a root without
   ``configs/`` is refused with one line naming the variable;
2. the source checkout the package was imported from (``natix_miner/..`` has ``configs/``): a clone,
   ``pip install -e .``, ``python neurons/miner.py``;
3. the copy inside the installed package, ``natix_miner/_shipped/`` (``pip install .`` puts it there:
   ``setup.py``'s ``build_py`` copies the files above, ``MANIFEST.in`` carries them in an sdist).

The **model store** (weights that are downloaded, pulled, trained or added; manifests written by
``natix-miner models add|pull``) is writable and separate: ``$NATIX_MODEL_DIR``, else ``models/`` of
the root when the root is a checkout (as before), else ``./models`` in the working directory (an
installed package never writes inside site-packages). Shipped manifests stay visible from any store.

Usage::

    from natix_miner import resources
    resources.root()                         # Path: the shipped files' root
    resources.config_dir()                   # root/configs (profiles by name: configs/NAME.yaml)
    resources.shipped("models/manifests")    # root/models/manifests
    resources.model_store_dir()              # the writable store
    resources.is_packaged()                  # True when the root is the installed package's copy
"""

import os
import typing
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, when running from source
PACKAGED_ROOT = Path(__file__).resolve().parent / "_shipped"  # written by setup.py's build_py

# what a root holds, relative to it: setup.py copies these globs into PACKAGED_ROOT (MANIFEST.in too)
SHIPPED_GLOBS: typing.Tuple[str, ...] = (
    "configs/*.yaml", "configs/*.consensus.json", "models/README.md", "models/manifests/*.json",
    "models/cards/*.md", "models/demo/*.json", "models/demo/*.npz", "models/demo/*.pt", "models/demo/*.pth")


class RootError(RuntimeError):
    """``NATIX_ROOT`` names a directory without ``configs/``; the message names the fix."""


def _has_configs(path: Path) -> bool:
    return (path / "configs").is_dir()


def root() -> Path:
    """The root of the shipped files: ``$NATIX_ROOT`` > the source checkout > the installed copy."""
    from natix_miner import envs

    explicit = envs.get("NATIX_ROOT")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not _has_configs(path):
            raise RootError(f"NATIX_ROOT={explicit}: no configs/ directory there; point it at a natix-miner "
                            f"checkout (or a copy of its configs/ and models/), or unset it")
        return path
    if _has_configs(SOURCE_ROOT):
        return SOURCE_ROOT
    return PACKAGED_ROOT


def is_packaged() -> bool:
    """True when the shipped files come from the installed package's read-only copy."""
    return root() == PACKAGED_ROOT


def shipped(relative: str) -> Path:
    """A shipped file or directory: ``shipped("models/manifests")`` -> ``root()/models/manifests``."""
    return root() / relative


def config_dir() -> Path:
    """The profiles' directory: ``natix-miner run --profile NAME`` reads ``config_dir()/NAME.yaml``."""
    return shipped("configs")


def default_profile() -> Path:
    """The embedded default profile, ``demo-cpu``."""
    return config_dir() / "demo-cpu.yaml"


def model_store_dir() -> Path:
    """The writable model store: ``$NATIX_MODEL_DIR`` > ``root()/models`` (a checkout) > ``./models``."""
    from natix_miner import envs

    explicit = envs.get("NATIX_MODEL_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    if not is_packaged():
        return root() / "models"
    return Path(os.getcwd()) / "models"


def check_writable(path: typing.Union[str, Path], what: str, source: typing.Union[str, Path, None] = None) -> None:
    """Refuse (``ValueError``, naming the fix) to write ``what`` into the installed package's read-only
    copy: ``natix-miner calibrate --profile demo-cpu`` on an installed package would otherwise write
    ``demo-cpu.consensus.json`` inside site-packages. ``source``: the shipped file to copy out (the profile)."""
    target = Path(path).expanduser().resolve()
    if target == PACKAGED_ROOT or PACKAGED_ROOT in target.parents:
        copy = source or f"{target.parent}/<name>.yaml"
        raise ValueError(f"{what} would be written to {target}, inside the installed package's read-only copy; "
                         f"copy the profile out (cp {copy} ./my-profile.yaml) and pass --profile ./my-profile.yaml, "
                         f"or set NATIX_ROOT to a writable copy of configs/ and models/")


def shipped_files(source: Path) -> typing.List[Path]:
    """The files under ``source`` (a checkout) that a package ships, relative to it (``setup.py`` and a
    test use it)."""
    out: typing.List[Path] = []
    for pattern in SHIPPED_GLOBS:
        out.extend(p.relative_to(source) for p in sorted(source.glob(pattern)) if p.is_file())
    return out
