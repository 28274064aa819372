"""Make the process hub-free: no model-hub lookups, no ultralytics downloads or font fetches.

Call :func:`enforce_offline` before importing transformers / ultralytics in tests, demos and CI.

Commands that load a profile (``run``, ``predict``, ``evaluate``, ``bench``, ``soak``,
``mock-validator``) call :func:`apply_download_policy` first: offline unless ``--allow-downloads``
or ``NATIX_ALLOW_DOWNLOADS=1``, so a missing model fails at once with its fix instead of retrying a
hub for minutes.

Usage::

    from natix_miner.offline import apply_download_policy, enforce_offline
    enforce_offline()                      # sets HF_HUB_OFFLINE=1, YOLO_OFFLINE=1, ... (unless set)
    apply_download_policy(args.allow_downloads)   # offline (forced) unless downloads are allowed
"""

import os
import shutil
import sys
import tempfile
import typing

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",
    "YOLO_VERBOSE": "False",
}


def bundled_font() -> str:
    """A TTF that ships inside a pip package (matplotlib's DejaVuSans)."""
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")


ALLOW_DOWNLOADS_ENV = "NATIX_ALLOW_DOWNLOADS"
TRUE = ("1", "true", "yes", "on")


def downloads_allowed(flag: typing.Optional[bool] = None) -> bool:
    """``--allow-downloads`` given, or ``NATIX_ALLOW_DOWNLOADS`` true."""
    return bool(flag) or os.environ.get(ALLOW_DOWNLOADS_ENV, "").strip().lower() in TRUE


def apply_download_policy(allow: typing.Optional[bool] = None) -> bool:
    """Offline unless downloads are allowed (returns whether they are).

    Either way the choice is forced on this process and its children: offline overwrites an
    inherited ``HF_HUB_OFFLINE=0``, allowed clears inherited offline variables and sets
    ``NATIX_ALLOW_DOWNLOADS=1``; hub libraries already imported are switched too (they read the
    variables at import)."""
    allowed = downloads_allowed(allow)
    if allowed:
        os.environ[ALLOW_DOWNLOADS_ENV] = "1"  # child processes (spawned miners) inherit the choice
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "YOLO_OFFLINE"):
            os.environ.pop(k, None)
    else:
        enforce_offline(force=True)
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        hub.HF_HUB_OFFLINE = not allowed
    return allowed


def enforce_offline(yolo_config_dir: str = None, force: bool = False) -> None:
    """The offline variables (``force``: overwrite values already set) and a bundled font for
    ultralytics, which would otherwise download Arial."""
    for k, v in OFFLINE_ENV.items():
        if force:
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)
    cfg_dir = yolo_config_dir or os.environ.get("YOLO_CONFIG_DIR") or os.path.join(tempfile.gettempdir(), "natix-yolo")
    os.environ["YOLO_CONFIG_DIR"] = cfg_dir
    target = os.path.join(cfg_dir, "Ultralytics", "Arial.ttf")
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copyfile(bundled_font(), target)
        except (ImportError, OSError):
            pass
    for name in ("Arial.Unicode.ttf",):
        alt = os.path.join(cfg_dir, "Ultralytics", name)
        if os.path.exists(target) and not os.path.exists(alt):
            shutil.copyfile(target, alt)
