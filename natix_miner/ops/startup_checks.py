"""File-permission checks at start: secret keys and configs must not be open to other users.

What is checked (POSIX only), and what happens:

============================================  =========  ==========================================
finding                                       level      why
============================================  =========  ==========================================
hotkey / coldkey file readable or writable    refuse     anyone on the host can steal or swap the
by group or others                                       key that earns the rewards
wallet directories writable by group/others   refuse     a key file can be replaced
config / model file writable by others        refuse     the cascade, model paths or a pickled
(profile, consensus JSON, local metagraph,               checkpoint can be swapped (code execution
any local file the profile points at)                    at model load)
config file holding a secret (token,          refuse     the secret leaks to every local user
secret_id, password, mnemonic) readable by
group or others
config / model file writable by group         warn       usually a shared deploy group; say so
coldkey private key present on a chain miner  warn       a miner needs only ``coldkeypub.txt``
running as root                               warn       a model-loading bug then owns the host
============================================  =========  ==========================================

``NATIX_ALLOW_INSECURE_PERMISSIONS=1`` turns refusals into warnings (for throw-away hosts).

Usage::

    from natix_miner.ops.startup_checks import enforce_permissions, check_permissions
    enforce_permissions(cfg, wallet, profile)     # logs warnings; raises InsecurePermissions on refusals
    for f in check_permissions(cfg, wallet, profile): print(f)
"""

import dataclasses
import logging
import os
import re
import stat
import typing

log = logging.getLogger("natix_miner.startup")

REFUSE, WARN = "refuse", "warn"
_SECRET_KEY = re.compile(r"(?i)\b(?:[\w.-]*_)?(?:token|secret(?:_id)?|password|passphrase|mnemonic|private[_-]?key)"
                         r"[\"']?\s*[:=]\s*[\"']?[^\s\"'#,}]{6,}")


class InsecurePermissions(PermissionError):
    """At least one ``refuse`` finding; the message lists them with the fix."""


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str  # "refuse" | "warn"
    path: str
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"[{self.level}] {self.path}: {self.problem}{fix}"


def _mode(path: str) -> typing.Optional[int]:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def _check_secret_file(path: str, what: str) -> typing.List[Finding]:
    mode = _mode(path)
    if mode is None:
        return []
    if mode & 0o077:
        return [Finding(REFUSE, path, f"{what} has mode {mode:o}: readable or writable by other users",
                        f"chmod 600 {path}")]
    return []


def _check_dir(path: str, what: str) -> typing.List[Finding]:
    st_mode = _mode(path)
    if st_mode is None:
        return []
    if st_mode & 0o022 and not st_mode & stat.S_ISVTX:
        return [Finding(REFUSE, path, f"{what} has mode {st_mode:o}: other users can replace files in it",
                        f"chmod go-w {path}")]
    return []


def _check_config_file(path: str, what: str) -> typing.List[Finding]:
    mode = _mode(path)
    if mode is None or not os.path.isfile(path):
        return []
    out = []
    if mode & 0o002:
        out.append(Finding(REFUSE, path, f"{what} has mode {mode:o}: writable by every user", f"chmod o-w {path}"))
    elif mode & 0o020:
        out.append(Finding(WARN, path, f"{what} has mode {mode:o}: writable by its group", f"chmod g-w {path}"))
    if mode & 0o044 and _holds_secret(path):
        out.append(Finding(REFUSE, path, f"{what} holds a secret and has mode {mode:o}: readable by other users",
                           f"chmod 600 {path}, or move the secret to Vault / the environment"))
    return out


def _holds_secret(path: str) -> bool:
    try:
        if os.path.getsize(path) > 1024 * 1024:
            return False  # model weights, not a config
        with open(path, "r", errors="replace") as fh:
            return bool(_SECRET_KEY.search(fh.read()))
    except OSError:
        return False


def _profile_files(profile) -> typing.List[typing.Tuple[str, str]]:
    """The profile, its fitted consensus, and every existing local file its experts point at."""
    files: typing.List[typing.Tuple[str, str]] = []
    if profile is None:
        return files
    if getattr(profile, "path", None):
        files.append((profile.path, "profile"))
        cons = profile.consensus_file
        if cons is not None and cons.exists():
            files.append((str(cons), "fitted consensus"))

    def walk(value, name):
        if isinstance(value, str) and value and ("/" in value or value.endswith((".pt", ".pth", ".npz", ".yaml"))):
            p = profile.resolve_path(value) if hasattr(profile, "resolve_path") else value
            if os.path.isfile(p):
                files.append((p, f"file of expert {name}"))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, name)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, name)

    for spec in getattr(profile, "experts", []):
        walk(spec.model, spec.name)
        walk(spec.options, spec.name)
    return files


def _keyfile_path(wallet, attr: str) -> typing.Optional[str]:
    try:
        path = getattr(wallet, attr).path
    except Exception:
        return None
    path = os.path.expanduser(path) if path else None
    return path if path and os.path.exists(path) else None


def check_permissions(cfg=None, wallet=None, profile=None) -> typing.List[Finding]:
    """Every finding for this host; empty when all is well (and always on non-POSIX systems)."""
    if os.name != "posix":
        return []
    out: typing.List[Finding] = []
    local = bool(getattr(cfg, "local", False))
    if wallet is not None:
        hot = _keyfile_path(wallet, "hotkey_file")
        if hot:
            out += _check_secret_file(hot, "hotkey file")
            hotkeys_dir = os.path.dirname(hot)
            out += _check_dir(hotkeys_dir, "hotkeys directory")
            out += _check_dir(os.path.dirname(hotkeys_dir), "wallet directory")
        cold = _keyfile_path(wallet, "coldkey_file")
        if cold:
            out += _check_secret_file(cold, "coldkey file")
            if not local:
                out.append(Finding(WARN, cold, "the coldkey's private key is on the mining host; a miner needs "
                                               "only coldkeypub.txt", "keep the coldkey on an offline machine"))
    if cfg is not None:
        if getattr(cfg, "local_metagraph", None):
            out += _check_config_file(cfg.local_metagraph, "local metagraph")
        log_dir = getattr(getattr(cfg, "logging", None), "dir", None)
        if log_dir and os.path.isdir(log_dir):
            mode = _mode(log_dir) or 0
            if mode & 0o002 and not mode & stat.S_ISVTX:
                out.append(Finding(WARN, log_dir, f"log directory has mode {mode:o}: anyone can plant or "
                                                  "replace log files", f"chmod o-w {log_dir}"))
    seen = set()
    for path, what in _profile_files(profile):
        if path not in seen:
            seen.add(path)
            out += _check_config_file(path, what)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        out.append(Finding(WARN, "(process)", "running as root", "run the miner as an unprivileged user"))
    return out


def enforce_permissions(cfg=None, wallet=None, profile=None,
                        allow_insecure: typing.Optional[bool] = None) -> typing.List[Finding]:
    """Log every finding; raise :class:`InsecurePermissions` when one says ``refuse``
    (unless ``allow_insecure`` or ``NATIX_ALLOW_INSECURE_PERMISSIONS=1``)."""
    if allow_insecure is None:
        from natix_miner import envs

        allow_insecure = (envs.get("NATIX_ALLOW_INSECURE_PERMISSIONS") or "").lower() in ("1", "true", "yes")
    findings = check_permissions(cfg, wallet, profile)
    refusals = [f for f in findings if f.level == REFUSE]
    for f in findings:
        if f.level == WARN or allow_insecure:
            log.warning("permissions: %s", f)
    if refusals and not allow_insecure:
        lines = "\n  ".join(str(f) for f in refusals)
        raise InsecurePermissions(f"refusing to start with insecure file permissions:\n  {lines}\n"
                                  "(set NATIX_ALLOW_INSECURE_PERMISSIONS=1 to start anyway)")
    return findings
