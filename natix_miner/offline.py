"""Make the process hub-free: no model-hub lookups, no ultralytics downloads or font fetches.

Call :func:`enforce_offline` before importing transformers / ultralytics in tests, demos and CI.

Usage::

    from natix_miner.offline import enforce_offline
    enforce_offline()                      # sets HF_HUB_OFFLINE=1, YOLO_OFFLINE=1, ...
"""

import os
import shutil
import tempfile

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


def enforce_offline(yolo_config_dir: str = None) -> None:
    for k, v in OFFLINE_ENV.items():
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
