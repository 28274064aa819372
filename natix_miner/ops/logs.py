"""Logging: loguru, structured, rotating files, secrets redacted.

Standard ``logging`` records (ours, bittensor's, uvicorn's) are routed into loguru, so every line
goes through one redaction step before it reaches any sink. Redaction removes:

* values of secret-looking keys (``token=...``, ``"mnemonic": "..."``, ``secret_id: ...``),
  whole quoted values and whole unquoted mnemonics included;
* Vault / OpenBao tokens (``hvs.``, ``s.``, ``hvb.``, ``b.`` prefixes) and ``0x`` + 64-hex seeds;
* every value handed to :func:`register_secret` (the Vault client registers the mnemonic, seed,
  token and AppRole secret id it reads), wherever it appears; key material (mnemonic, seed) is
  registered as a digest (``digest=True``): any run of words / hex that hashes to it is masked, and
  no plaintext copy of the phrase is kept for redaction's sake;
* the same in structured ``extra`` fields and in exception messages.

Usage::

    from natix_miner.ops.logs import setup_logging, register_secret, redact
    setup_logging(cfg.logging)          # stderr + <dir>/miner.log (rotated, retained, optional JSON)
    register_secret(mnemonic)           # never appears in a log line from now on
    redact("token=s.abc...")            # -> "token=***"
"""

import hashlib
import logging
import os
import re
import sys
import threading
import time
import typing

from natix_miner.config import LoggingConfig

MASK = "***"
_KEYS = r"(?:token|secret(?:_id)?|password|passphrase|mnemonic|seed|private[_-]?key)"
# "mnemonic": "w1 w2 ... w12"  /  token='abc'  -> the whole quoted value
_QUOTED = re.compile(r"(?i)(\b" + _KEYS + r"\b[\"']?\s*[:=]\s*)([\"'])(.*?)(\2)")
# mnemonic: w1 w2 ... w12 (unquoted): the run of lowercase words after the key
_WORDS = re.compile(r"(?i)(\b(?:mnemonic|seed[ _-]?phrase)\b\s*[:=]\s*)([a-z]+(?:[ \t]+[a-z]+){2,23})")
# token=abc / X-Vault-Token: s.abc -> the value up to a delimiter
_PLAIN = re.compile(r"(?i)(\b" + _KEYS + r"\b[\"']?\s*[:=]\s*)(?![\"'*])([^\s\"',;}\]]+)")
_TOKENS = [
    re.compile(r"\b(?:hvs|hvb|hvr|s|b|r)\.[A-Za-z0-9_-]{20,}"),  # Vault / OpenBao tokens
    re.compile(r"\b0x[0-9a-fA-F]{64}\b"),  # raw 32-byte seeds / private keys
]

_registered: typing.Set[str] = set()  # process-wide by nature: any sink may see any secret
_digests: typing.Dict[int, typing.Set[bytes]] = {}  # token count -> sha256 of the normalised tokens
_registered_lock = threading.Lock()
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_HEX_SEED = re.compile(r"(?:0x)?([0-9a-f]{64})")


def _tokens(text: str) -> typing.List[typing.Tuple[int, int, str]]:
    """(start, end, normalised) for each alphanumeric run: lower case, a ``0x`` seed prefix dropped."""
    out = []
    for m in _TOKEN.finditer(text):
        t = m.group().lower()
        h = _HEX_SEED.fullmatch(t)
        out.append((m.start(), m.end(), h.group(1) if h else t))
    return out


def _digest(norms: typing.Sequence[str]) -> bytes:
    return hashlib.sha256(" ".join(norms).encode()).digest()


def register_secret(value: typing.Optional[str], digest: bool = False) -> None:
    """Redact ``value`` (and its whitespace-normalised form) from every later log line.

    ``digest``: keep only a hash of its words (key material: a mnemonic or seed that the caller
    wipes from memory once the key is built); the same words in any spacing, case or punctuation
    are masked."""
    if not value or len(str(value)) < 6:
        return
    if digest:
        norms = [t[2] for t in _tokens(str(value))]
        if norms:
            with _registered_lock:
                _digests.setdefault(len(norms), set()).add(_digest(norms))
        return
    value = str(value)
    with _registered_lock:
        _registered.add(value)
        norm = " ".join(value.split())
        if norm != value:
            _registered.add(norm)


def forget_secrets() -> None:
    """Tests only: clear the registry."""
    with _registered_lock:
        _registered.clear()
        _digests.clear()


def _mask_digests(text: str, digests: typing.Dict[int, typing.Set[bytes]]) -> str:
    """Mask every run of ``n`` consecutive tokens whose digest is registered for ``n``."""
    toks = _tokens(text)
    spans = []
    for n, known in digests.items():
        for i in range(len(toks) - n + 1):
            if _digest([t[2] for t in toks[i:i + n]]) in known:
                spans.append((toks[i][0], toks[i + n - 1][1]))
    if not spans:
        return text
    out, pos = [], 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos:max(pos, start)] + (MASK if start >= pos else ""))
        pos = end
    return "".join(out) + text[pos:]


def redact(text: str) -> str:
    """Mask secrets in ``text`` (see the module docstring for what counts)."""
    if not text:
        return text
    with _registered_lock:
        known = sorted(_registered, key=len, reverse=True)
        digests = {n: set(d) for n, d in _digests.items()}
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    if digests:
        text = _mask_digests(text, digests)
    text = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(4)}", text)
    text = _WORDS.sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _PLAIN.sub(lambda m: f"{m.group(1)}{MASK}", text)
    for pat in _TOKENS:
        text = pat.sub(MASK, text)
    return text


_SECRET_KEY = re.compile(r"(?i)" + _KEYS)


def _redact_value(key: str, value):
    if _SECRET_KEY.search(str(key)):
        return MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value("", v) for v in value)
    return value


class RedactedError(Exception):
    """Stands in for an exception whose message (or chained cause) held a secret."""


def _chain(exc: BaseException) -> typing.List[BaseException]:
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _redacted_exception(exc: BaseException) -> BaseException:
    """The exception itself when nothing in its chain needs masking; else a picklable copy of the
    same type (or :class:`RedactedError`) with a redacted message and no chain."""
    chain = _chain(exc)
    if all(redact(str(e)) == str(e) for e in chain):
        return exc
    clean = redact(str(exc)) + (" (chained exceptions hidden: they held secrets)" if len(chain) > 1 else "")
    try:
        new = type(exc)(clean)
        if str(new) == clean:
            return new
    except Exception:  # noqa: BLE001 - constructors with other signatures
        pass
    return RedactedError(f"{type(exc).__name__}: {clean}")


def _patch(record) -> None:
    record["message"] = redact(record["message"])
    if record["extra"]:
        for k in list(record["extra"]):
            record["extra"][k] = _redact_value(k, record["extra"][k])
    exc = record["exception"]
    if exc is not None and exc.value is not None:
        clean = _redacted_exception(exc.value)
        if clean is not exc.value:
            record["exception"] = type(exc)(type(clean), clean, exc.traceback)


class _Intercept(logging.Handler):
    """Route standard ``logging`` records into loguru (and so through redaction)."""

    def emit(self, record: logging.LogRecord) -> None:
        from loguru import logger

        try:
            level: typing.Union[str, int] = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format in someone's log call must not kill the caller
            message = f"{record.msg!r} {record.args!r}"
        logger.bind(logger_name=record.name).opt(depth=6, exception=record.exc_info).log(level, message)


def _private_opener(path: str, flags: int) -> int:
    """``open(..., opener=)`` that creates files 0600 (log lines name hotkeys, IPs and errors)."""
    return os.open(path, flags, 0o600)


def _gzip_private(path: str) -> None:
    """loguru ``compression`` callable: ``path`` -> ``path.gz`` created 0600, then ``path`` removed."""
    import gzip
    import shutil

    with open(path, "rb") as src, open(path + ".gz", "wb", opener=_private_opener) as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as dst:
            shutil.copyfileobj(src, dst)
    os.remove(path)


class GuardedFileSink:
    """loguru's own file sink (rotation, retention, compression) behind a guard.

    A write that fails (disk full, directory removed, read-only file system) prints ONE warning on
    stderr and the line is dropped; the file is reopened at most every ``retry_s`` seconds, and
    the first line written after an outage says how many lines were lost. Without the guard
    loguru printed a multi-line error block to stderr for every dropped line. Files are created
    0600, an existing ``miner.log`` is made 0600.

    Usage::

        logger.add(GuardedFileSink("/var/log/natix/miner.log", rotation="100 MB", retention="14 days"),
                   enqueue=True)
    """

    def __init__(self, path: str, rotation: typing.Any = None, retention: typing.Any = None,
                 retry_s: float = 30.0, stream: typing.Optional[typing.TextIO] = None):
        self.path = path
        self.retry_s = retry_s
        self.dropped = 0
        self._kwargs = {"rotation": rotation, "retention": retention, "compression": _gzip_private,
                        "opener": _private_opener, "delay": True}
        self._stream = stream
        self._sink = None
        self._retry_at = 0.0
        self._warned = False
        try:
            if os.path.isfile(path) and os.stat(path).st_uid == os.getuid():
                os.chmod(path, 0o600)
        except OSError:
            pass

    def _open(self):
        from loguru._file_sink import FileSink  # loguru is pinned (requirements.lock)

        return FileSink(self.path, **self._kwargs)

    def write(self, message: str) -> None:
        if self._sink is None:
            if time.monotonic() < self._retry_at:
                self.dropped += 1
                return
            self._sink = self._open()
        try:
            if self.dropped and self._warned:
                self._sink.write(f"[{self.dropped} log lines dropped: {self.path} was not writable]\n")
            self._sink.write(message)
        except Exception as exc:  # noqa: BLE001 - a log line is never worth an answer
            self._failed(exc)
            return
        if self._warned:
            self._warned, self.dropped = False, 0

    def _failed(self, exc: BaseException) -> None:
        self.dropped += 1
        sink, self._sink = self._sink, None
        self._retry_at = time.monotonic() + self.retry_s
        try:
            sink.stop()  # closes the file even when its final flush fails too
        except Exception:  # noqa: BLE001
            pass
        if not self._warned:
            self._warned = True
            stream = self._stream or sys.__stderr__
            try:
                stream.write(f"natix-miner: WARNING: cannot write {self.path} ({type(exc).__name__}: {exc}); "
                             f"its lines are dropped, retrying every {self.retry_s:.0f}s\n")
                stream.flush()
            except Exception:  # noqa: BLE001
                pass

    def stop(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.stop()
            except Exception:  # noqa: BLE001
                pass


TEXT_FORMAT = ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
               "<cyan>{name}</cyan>:<cyan>{line}</cyan> - <level>{message}</level>")


def setup_logging(cfg: LoggingConfig, stderr: bool = True) -> typing.List[int]:
    """Configure loguru (replacing earlier sinks) and route std ``logging`` into it.

    Returns the loguru sink ids. Files go to ``<cfg.dir>/miner.log`` (mode 0600, through
    :class:`GuardedFileSink`: a full disk costs log lines, never answers), rotated at
    ``cfg.rotation`` (size or time, e.g. ``"100 MB"`` / ``"1 day"``), kept for ``cfg.retention``,
    compressed (gz, 0600) when rotated. ``cfg.json_logs`` writes one JSON object per line
    (loguru's ``serialize``), with ``extra`` fields bound via ``logger.bind(...)``.
    """
    from loguru import logger

    level = cfg.level.upper()
    logger.remove()
    logger.configure(patcher=_patch)
    ids = []
    if stderr:
        ids.append(logger.add(sys.stderr, level=level, format=TEXT_FORMAT, serialize=cfg.json_logs,
                              backtrace=False, diagnose=False))
    if cfg.dir:
        os.makedirs(cfg.dir, exist_ok=True)
        sink = GuardedFileSink(os.path.join(cfg.dir, "miner.log"), rotation=cfg.rotation, retention=cfg.retention)
        ids.append(logger.add(sink, level=level, format=TEXT_FORMAT, serialize=cfg.json_logs, enqueue=True,
                              backtrace=False, diagnose=False))
    std_level = logging.getLevelName(level) if level != "TRACE" else logging.DEBUG
    if not isinstance(std_level, int):
        std_level = logging.INFO
    logging.basicConfig(handlers=[_Intercept()], level=std_level, force=True)
    unmute_project_loggers()
    return ids


def unmute_project_loggers() -> None:
    """Importing bittensor sets every logger that exists at that moment to CRITICAL (its default
    state), so engine warnings (expert failures, breaker trips) vanished when ``natix_miner.engine``
    was imported first, as ``natix-miner run`` does. Import it now, then let ours inherit again."""
    import bittensor  # noqa: F401 - its one-time muting must happen before we undo it

    for name in list(logging.root.manager.loggerDict):
        if name == "natix_miner" or name.startswith("natix_miner."):
            logging.getLogger(name).setLevel(logging.NOTSET)
