"""Logging setup: loguru, structured, rotating files, secrets redacted. Standard ``logging`` records
(ours and bittensor's) are routed into loguru.

Usage::

    setup_logging(cfg.logging)
"""

import logging
import re
import sys

from natix_miner.config import LoggingConfig

_SECRET_PATTERNS = [
    re.compile(r"(?i)(token|secret|password|mnemonic|seed|private[_-]?key)(\"?\s*[:=]\s*\"?)([^\s\",}]+)"),
    re.compile(r"\b(hvs|s|hvb|b)\.[A-Za-z0-9_-]{20,}\b"),  # Vault / OpenBao tokens
    re.compile(r"\b0x[0-9a-fA-F]{64}\b"),  # raw seeds
]


def redact(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    for pat in _SECRET_PATTERNS[1:]:
        text = pat.sub("***", text)
    return text


class _Intercept(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(cfg: LoggingConfig) -> None:
    from loguru import logger

    def _patch(record):
        record["message"] = redact(record["message"])

    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(sys.stderr, level=cfg.level.upper(), serialize=cfg.json_logs, backtrace=False, diagnose=False)
    if cfg.dir:
        import os

        os.makedirs(cfg.dir, exist_ok=True)
        logger.add(os.path.join(cfg.dir, "miner.log"), level=cfg.level.upper(), rotation=cfg.rotation,
                   retention=cfg.retention, serialize=cfg.json_logs, enqueue=True, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_Intercept()], level=logging.getLevelName(cfg.level.upper()), force=True)
