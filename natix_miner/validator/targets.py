"""Who the mock validator queries: running miners (``host:port:hotkey``) or miners it spawns.

``SpawnedMiner`` starts ``neurons/miner.py --local`` as a subprocess with a throw-away miner wallet
(so the validator knows the axon's hotkey), admits the validator's hotkey through
``--blacklist.allowed_hotkeys``, waits until the axon accepts connections, and stops it with
SIGTERM (SIGKILL to its process group after a grace period).

Usage::

    t = parse_target("127.0.0.1:8091:5F...")            # Target
    ts = targets_from_miner("http://127.0.0.1:9100")      # every hotkey a running miner serves (its /readyz)
    with SpawnedMiner(profile="configs/demo-cpu.yaml", validator_hotkey=vw.hotkey.ss58_address) as m:
        m.target                                          # Target for the dendrite
"""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
MINER_ENTRY = REPO_ROOT / "neurons" / "miner.py"


@dataclasses.dataclass(frozen=True)
class Target:
    host: str
    port: int
    hotkey: str
    name: str
    coldkey: typing.Optional[str] = None

    def axon_info(self):
        from natix_miner.miner.local import axon_info

        return axon_info(self.host, self.port, self.hotkey, self.coldkey)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_target(text: str, name: typing.Optional[str] = None) -> Target:
    """``host:port:hotkey`` (optionally ``name=host:port:hotkey``)."""
    if "=" in text:
        name, text = text.split("=", 1)
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"target {text!r}: expected host:port:hotkey")
    host, port, hotkey = parts
    try:
        port_i = int(port)
    except ValueError:
        raise ValueError(f"target {text!r}: port {port!r} is not a number") from None
    if not 0 < port_i < 65536:
        raise ValueError(f"target {text!r}: port out of range")
    return Target(host, port_i, hotkey, name or f"{host}:{port_i}")


def targets_from_miner(url: str, timeout_s: float = 5.0) -> typing.List[Target]:
    """Every axon a running miner serves, from its metrics/health server's ``/readyz`` (answered
    whether ready or not): one per hotkey of a ``--hotkeys`` miner, else its one axon. The axons are
    reached on the URL's host. A miner that cannot be read is a ``ValueError`` naming the URL."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=timeout_s) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 503: not ready, the body still names the axons
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:
        raise ValueError(f"--miner-url {url}: cannot read its /readyz ({exc}); is the miner running with "
                         f"--metrics.port on that address?") from None
    rows = [(n, h.get("hotkey"), (h.get("axon") or {}).get("port")) for n, h in sorted((body.get("hotkeys") or {}).items())]
    if not rows and body.get("hotkey"):
        rows = [(None, body["hotkey"], ((body.get("checks") or {}).get("axon") or {}).get("port"))]
    targets = [Target(host, int(port), hotkey, name or f"{host}:{port}") for name, hotkey, port in rows if hotkey and port]
    if not targets:
        raise ValueError(f"--miner-url {url}: its /readyz names no serving axon yet; wait until it serves")
    return targets


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MinerStartError(RuntimeError):
    """The spawned miner exited or never opened its port; the message carries its log's tail."""


class SpawnedMiner:
    def __init__(self, validator_hotkey: str, profile: typing.Optional[str] = None, port: int = 0,
                 name: typing.Optional[str] = None, python: str = sys.executable,
                 extra_args: typing.Sequence[str] = (), log_path: typing.Optional[str] = None,
                 start_timeout: float = 300.0):
        self.validator_hotkey = validator_hotkey
        self.profile = profile
        self.port = port or free_port()
        self.python = python
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.workdir = tempfile.mkdtemp(prefix="natix-mock-miner-")
        self.log_path = log_path or os.path.join(self.workdir, "miner.log")
        if name is None:
            from natix_miner.config import DEFAULT_PROFILE

            name = Path(profile).stem if profile else DEFAULT_PROFILE.stem
        self.name = name
        self.wallet_path = os.path.join(self.workdir, "wallets")
        self.proc: typing.Optional[subprocess.Popen] = None
        self.target: typing.Optional[Target] = None
        self._log = None

    def command(self, wallet_path: str) -> typing.List[str]:
        # the checkout's entry point; an installed package (no neurons/) runs the same through its cli
        entry = [str(MINER_ENTRY)] if MINER_ENTRY.is_file() else ["-m", "natix_miner.cli", "run"]
        cmd = [self.python, *entry, "--local", "--axon.ip", "127.0.0.1", "--axon.port", str(self.port),
               "--blacklist.allowed_hotkeys", self.validator_hotkey, "--metrics.enabled", "false",
               "--wallet.path", wallet_path, "--wallet.name", "miner", "--wallet.hotkey", "default"]
        if self.profile:
            cmd += ["--profile", str(self.profile)]
        return cmd + self.extra_args

    def start(self) -> Target:
        from natix_miner.miner.wallet import ephemeral_wallet

        wallet_path = self.wallet_path = os.path.join(self.workdir, "wallets")
        wallet = ephemeral_wallet("miner", "default", wallet_path)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        from natix_miner.offline import OFFLINE_ENV

        for k, v in OFFLINE_ENV.items():
            env.setdefault(k, v)
        self.proc = subprocess.Popen(self.command(wallet_path), cwd=str(REPO_ROOT), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                shutil.rmtree(self.workdir, ignore_errors=True)  # the tail is in the message: leave no folder
                raise MinerStartError(f"miner exited with code {self.proc.returncode}:\n{tail}")
            if port_open("127.0.0.1", self.port):
                self.target = Target("127.0.0.1", self.port, wallet.hotkey.ss58_address, self.name,
                                     wallet.coldkeypub.ss58_address)
                return self.target
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        raise MinerStartError(f"miner did not open port {self.port} in {self.start_timeout:.0f}s:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 15.0) -> typing.Optional[int]:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the group this class created
                except ProcessLookupError:
                    pass
                p.wait(5)
        if self._log:
            self._log.close()
            self._log = None
        shutil.rmtree(self.wallet_path, ignore_errors=True)  # the throw-away keys
        if p.returncode == 0 and self.log_path.startswith(self.workdir + os.sep):
            shutil.rmtree(self.workdir, ignore_errors=True)  # a clean run leaves no natix-* folder; a failed one its log
        return p.returncode

    def __enter__(self) -> "SpawnedMiner":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
