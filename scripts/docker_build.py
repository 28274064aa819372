"""Build Dockerfile.miner with this host's package sources: what CI and the docker test run.

On a GPU host with internet, plain ``docker build -f Dockerfile.miner -t natix-miner .`` is enough.
This script is for hosts like CI's, where pip reaches its registries only through this machine's
configuration (a TLS-intercepting proxy's CA bundle, package indexes on local disk):

* the CA bundle pip uses here is passed as a BuildKit secret (``--secret id=ca``), never a layer;
* pip's configured indexes and find-links (``pip config list``, ``PIP_*``) go in as a second secret
  (``id=pipconf``); the ones that are local directories (``file://...``) are served read-only over
  HTTP on 127.0.0.1 for the length of the build (``docker build --network host``), listed after the
  remote ones: when one file is on several indexes, pip's resolver takes the last index's copy
  (checked with pip 26.3), so the multi-GB torch/CUDA wheels come from local disk, not the proxy.

Usage::

    python scripts/docker_build.py --base local/debian:bookworm --tag natix-miner:cpu
    python scripts/docker_build.py --tag natix-miner:0.1.0                  # the CUDA base image
    python scripts/docker_build.py --no-host-pip ...                         # only the Dockerfile's defaults
    python scripts/docker_build.py --print-pipconf                           # what the build's pip sees

Exit status: docker's; 2 with one ``error: ...`` line when no Docker engine or BuildKit client is usable.
"""

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import typing
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CA = "/etc/ssl/certs/ca-certificates.crt"
PYPI = "https://pypi.org/simple"


class BuildError(RuntimeError):
    """The build cannot start; the message says what to do."""


# ---- which docker client can build with BuildKit --------------------------------------------------

def _run(cmd: typing.Sequence[str], env: typing.Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=60)


def docker_client() -> typing.List[str]:
    """The command that runs ``build`` with BuildKit (``RUN --mount``, ``--secret``).

    ``docker`` with the buildx plugin, else a client older than 23 (BuildKit built in, e.g. Debian's
    docker.io 20.10 at /usr/bin/docker), else :class:`BuildError`. ``NATIX_DOCKER`` overrides.
    """
    override = os.environ.get("NATIX_DOCKER")
    candidates = [override] if override else []
    for name in ("docker", "/usr/bin/docker"):
        path = shutil.which(name)
        if path and path not in candidates:
            candidates.append(path)
    if not candidates:
        raise BuildError("no docker client: install Docker (bash scripts/docker_setup.sh does, as root)")
    for cli in candidates:
        try:
            if _run([cli, "buildx", "version"]).returncode == 0:
                return [cli]
            ver = _run([cli, "version", "--format", "{{.Client.Version}}"])
        except (OSError, subprocess.TimeoutExpired):
            continue
        major = (ver.stdout.strip().split(".") or ["0"])[0]
        if major.isdigit() and int(major) < 23:
            return [cli]
    raise BuildError(f"none of {candidates} can build with BuildKit: install the buildx plugin, "
                     "or Debian's docker.io (its /usr/bin/docker has BuildKit built in)")


def engine_ok(cli: typing.Sequence[str]) -> typing.Optional[str]:
    """None when the engine answers, else why not."""
    try:
        r = _run([*cli, "version", "--format", "{{.Server.Version}}"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if r.returncode == 0 and r.stdout.strip() else (r.stderr.strip().splitlines() or ["no answer"])[-1]


# ---- this host's pip configuration, translated for the build ---------------------------------------

def host_pip_config(python: str = sys.executable) -> typing.Dict[str, str]:
    """``pip config list`` (files and ``PIP_*``) as {key: value}, later sources winning."""
    r = _run([python, "-m", "pip", "config", "list"])
    out: typing.Dict[str, str] = {}
    for line in r.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        out[key.split(".", 1)[-1].strip()] = value.strip().strip("'\"")
    return out


def _local_dir(entry: str) -> typing.Optional[Path]:
    if entry.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(entry).path))
    if "://" not in entry:
        return Path(entry).expanduser()
    return None


class _Roots:
    """Local directories to publish, and their URLs on the loopback server."""

    def __init__(self) -> None:
        self.roots: typing.List[Path] = []
        self.base = ""
        self.served: typing.Dict[str, int] = {}

    def url(self, path: Path, index: bool) -> str:
        # an index's pages link to ../../files/..., so its parent directory is served too
        root = path.parent if index else path
        if root not in self.roots:
            self.roots.append(root)
        return f"{self.base}/fs{urllib.parse.quote(str(path))}/"


def build_pipconf(cfg: typing.Mapping[str, str], roots: _Roots) -> str:
    """A pip.conf for the build: local indexes and find-links as loopback URLs, local indexes last
    (pip takes a file that several indexes hold from the last one)."""
    local_idx, remote_idx, links = [], [], []
    for key in ("index-url", "extra-index-url"):
        for entry in cfg.get(key, PYPI if key == "index-url" else "").split():
            d = _local_dir(entry)
            if d is None:
                remote_idx.append(entry)
            elif d.is_dir():
                local_idx.append(roots.url(d, index=True))
    for entry in cfg.get("find-links", "").split():
        d = _local_dir(entry)
        if d is None:
            links.append(entry)
        elif d.is_dir():
            links.append(roots.url(d, index=False))
    indexes = remote_idx + local_idx
    lines = ["[global]", f"index-url = {indexes[0]}"]
    if indexes[1:]:
        lines.append("extra-index-url = " + " ".join(indexes[1:]))
    if links:
        lines.append("find-links = " + " ".join(links))
    if cfg.get("timeout") or cfg.get("default-timeout"):
        lines.append(f"timeout = {cfg.get('timeout') or cfg.get('default-timeout')}")
    return "\n".join(lines) + "\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    roots: typing.Sequence[Path] = ()
    served: typing.Dict[str, int] = {}  # per server: {"files": n, "bytes": n} of distributions sent

    def do_GET(self) -> None:
        super().do_GET()
        path = urllib.parse.urlparse(self.path).path
        if path.endswith((".whl", ".tar.gz", ".zip")) and self.translate_path(self.path) != "/nonexistent":
            self.served["files"] = self.served.get("files", 0) + 1
            self.served["bytes"] = self.served.get("bytes", 0) + os.path.getsize(self.translate_path(self.path))

    def translate_path(self, path: str) -> str:
        p = urllib.parse.unquote(urllib.parse.urlparse(path).path)
        if not p.startswith("/fs/"):
            return "/nonexistent"
        real = Path(os.path.normpath(p[3:]))
        if any(real == r or r in real.parents for r in self.roots):
            return str(real)
        return "/nonexistent"

    def log_message(self, *args) -> None:  # quiet
        pass


@contextlib.contextmanager
def serve_roots(roots: _Roots):
    """Serve ``roots`` read-only on 127.0.0.1 (a free port) while the block runs."""
    handler = type("Handler", (_Handler,), {"roots": tuple(roots.roots), "served": roots.served})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory="/"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# ---- the build ------------------------------------------------------------------------------------

def build(tag: str, base: typing.Optional[str] = None, host_pip: bool = True,
          ca: typing.Optional[str] = None, extra: typing.Sequence[str] = (),
          quiet: bool = False) -> float:
    """Build ``Dockerfile.miner`` as ``tag``; returns seconds. Raises BuildError / CalledProcessError."""
    cli = docker_client()
    why = engine_ok(cli)
    if why:
        raise BuildError(f"no Docker engine answers ({why}): start it (bash scripts/docker_setup.sh)")
    cfg = host_pip_config() if host_pip else {}
    ca = ca or cfg.get("cert") or os.environ.get("PIP_CERT") or (DEFAULT_CA if os.path.exists(DEFAULT_CA) else None)
    cmd = [*cli, "build", "-f", str(REPO / "Dockerfile.miner"), "-t", tag]
    if base:
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    if quiet:
        cmd += ["--quiet"]
    else:
        cmd += ["--progress=plain"]
    if ca:
        cmd += ["--secret", f"id=ca,src={ca}"]
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    with tempfile.TemporaryDirectory(prefix="natix-build-") as tmp:
        roots = _Roots()
        stack = contextlib.ExitStack()
        with stack:
            if host_pip:
                roots.base = "http://127.0.0.1:{port}"
                conf = build_pipconf(cfg, roots)
                if roots.roots:
                    port = stack.enter_context(serve_roots(roots))
                    conf = conf.replace("{port}", str(port))
                    cmd += ["--network", "host"]
                pipconf = Path(tmp) / "pip.conf"
                pipconf.write_text(conf)
                pipconf.chmod(0o600)
                cmd += ["--secret", f"id=pipconf,src={pipconf}"]
            cmd += [*extra, str(REPO)]
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, env=env)
            seconds = time.monotonic() - t0
        if roots.served:
            print(f"docker_build: {roots.served['files']} distributions ({roots.served['bytes'] / 1e9:.2f} GB) "
                  f"came from this host's local indexes", file=sys.stderr)
        return seconds


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", default="natix-miner:local", help="image tag (natix-miner:local)")
    p.add_argument("--base", help="BASE_IMAGE build arg (default: the Dockerfile's CUDA runtime image)")
    p.add_argument("--ca", help=f"CA bundle for pip inside the build (default: pip's cert here, else {DEFAULT_CA})")
    p.add_argument("--no-host-pip", action="store_true", help="do not pass this host's pip indexes")
    p.add_argument("--print-pipconf", action="store_true", help="print the build's pip.conf and exit")
    p.add_argument("--quiet", action="store_true", help="docker build --quiet")
    p.add_argument("docker_args", nargs="*", help="more `docker build` arguments (after --)")
    a = p.parse_args(argv)
    if a.print_pipconf:
        roots = _Roots()
        roots.base = "http://127.0.0.1:PORT"
        print(build_pipconf(host_pip_config(), roots), end="")
        for r in roots.roots:
            print(f"# served: {r}")
        return 0
    try:
        seconds = build(a.tag, base=a.base, host_pip=not a.no_host_pip, ca=a.ca, extra=a.docker_args, quiet=a.quiet)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: docker build failed (exit {exc.returncode}); its output is above", file=sys.stderr)
        return exc.returncode or 1
    print(f"built {a.tag} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
