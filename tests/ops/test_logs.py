"""Logging: redaction of secrets in every shape, std-logging interception, JSON lines, rotation."""

import glob
import json
import logging
import os

import pytest

from natix_miner.config import LoggingConfig
from natix_miner.ops.logs import forget_secrets, redact, register_secret, setup_logging

MNEMONIC = "ten gesture two skate bachelor mixed badge autumn violin mountain fatigue version"


@pytest.fixture()
def loguru_reset():
    from loguru import logger

    yield logger
    logger.remove()
    logger.configure(patcher=None)
    logging.basicConfig(handlers=[], force=True)
    forget_secrets()


@pytest.mark.parametrize("line,leak", [
    (f'{{"mnemonic": "{MNEMONIC}"}}', "gesture"),
    (f"mnemonic: {MNEMONIC}", "fatigue"),
    (f"mnemonic='{MNEMONIC}'", "skate"),
    ("X-Vault-Token: s.AbCdEfGhIjKlMnOpQrStUvWx", "AbCdEf"),
    ("login with hvs.CAESIJ0123456789abcdefghijklmnopqrstuvwx failed", "CAESIJ"),
    ("secret_id=7d1c0e4e-2b8f-4b43-9b5e-3a1f0c9e8d7a", "7d1c0e4e"),
    ("seed 0x" + "ab" * 32 + " loaded", "abab"),
    ("password = hunter2hunter2", "hunter2"),
])
def test_redact_patterns(line, leak):
    out = redact(line)
    assert leak not in out, out
    assert "***" in out


def test_redact_keeps_ordinary_text():
    for line in ["loaded expert effnet (timm) on cuda:0 in 1.2s", "max_tokens=5 tier fast budget 0.5s",
                 "image sha256 " + "a" * 64, "uid 42 registered"]:
        assert redact(line) == line


def test_registered_secret_is_masked_anywhere():
    try:
        register_secret(MNEMONIC)
        assert redact(f"words were {MNEMONIC}!") == "words were ***!"
        spaced = MNEMONIC.replace(" ", "  ", 3)
        assert "gesture" not in redact(f"x {' '.join(spaced.split())} y")
    finally:
        forget_secrets()


def test_files_json_extra_exceptions_and_std_logging(tmp_path, loguru_reset):
    logger = loguru_reset
    setup_logging(LoggingConfig(level="DEBUG", dir=str(tmp_path), json_logs=True), stderr=False)
    register_secret(MNEMONIC)
    logging.getLogger("bittensor.test").warning("std logging says %s", MNEMONIC)
    logger.bind(mnemonic=MNEMONIC, hotkey="5Fxyz", nested={"token": "abc", "ok": f"in {MNEMONIC}"}).info("bound")
    try:
        raise ValueError(f"bad phrase {MNEMONIC}")
    except ValueError:
        logger.exception("failed to build the key")
    try:
        try:
            raise KeyError(MNEMONIC)
        except KeyError as inner:
            raise RuntimeError("outer message is clean") from inner
    except RuntimeError:
        logger.exception("chained")
    logger.complete()
    logger.remove()
    text = (tmp_path / "miner.log").read_text()
    assert "gesture" not in text and "fatigue" not in text
    assert "outer message is clean (chained exceptions hidden" in text
    rows = [json.loads(line) for line in text.splitlines()]
    msgs = [r["record"]["message"] for r in rows]
    assert "std logging says ***" in msgs
    bound = next(r for r in rows if r["record"]["message"] == "bound")["record"]["extra"]
    assert bound["mnemonic"] == "***" and bound["hotkey"] == "5Fxyz"
    assert bound["nested"] == {"token": "***", "ok": "in ***"}
    exc = next(r for r in rows if r["record"]["message"] == "failed to build the key")
    assert "ValueError: bad phrase ***" in exc["text"]
    std = next(r for r in rows if r["record"]["message"] == "std logging says ***")
    assert std["record"]["extra"]["logger_name"] == "bittensor.test"


def test_rotation_and_levels(tmp_path, loguru_reset):
    logger = loguru_reset
    setup_logging(LoggingConfig(level="INFO", dir=str(tmp_path), rotation="2 KB", retention="1 day"), stderr=False)
    for i in range(200):
        logger.info("line {} {}", i, "x" * 40)
    logger.debug("hidden debug line")
    logger.complete()
    logger.remove()
    files = glob.glob(os.path.join(tmp_path, "miner*.log*"))
    assert len(files) > 3, files
    assert any(f.endswith(".gz") for f in files)
    assert "hidden debug line" not in (tmp_path / "miner.log").read_text()
