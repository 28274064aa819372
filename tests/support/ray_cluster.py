"""A throw-away Ray cluster on 127.0.0.1 for tests and the Ray benchmark.

``ray start --head --block`` runs in a session of its own: every Ray process it starts (GCS, raylet,
workers, Serve replicas) belongs to that session, so :meth:`LocalRayCluster.kill` ends exactly those,
by process id (never ``ray stop``, which would end every Ray cluster of the user on the machine).
Every port is a free one: the cluster never collides with another on the same host.

Usage::

    with LocalRayCluster(num_cpus=2) as cluster:
        subprocess.run(["natix-miner", "engine", "serve", "--ray", cluster.address, ...])
        cluster.kill(); cluster.start()                   # a dead cluster, then a fresh one
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing

from tests.support.ops_support import free_port


def ray_executable() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


class LocalRayCluster:
    def __init__(self, num_cpus: int = 2, object_store_mb: int = 100, start_timeout_s: float = 60.0):
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.proc: typing.Optional[subprocess.Popen] = None
        self.temp_dir: typing.Optional[str] = None
        self.log = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "LocalRayCluster":
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: raylet socket paths are capped
        cmd = [ray_executable(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(self.port), "--num-cpus", str(self.num_cpus), "--num-gpus", "0",
               "--include-dashboard=false", "--disable-usage-stats",
               "--object-store-memory", str(self.object_store_mb * 1024 * 1024), "--temp-dir", self.temp_dir,
               "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--node-manager-port", str(free_port()),
               "--object-manager-port", str(free_port())]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        self.log = open(os.path.join(self.temp_dir, "ray-start.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        end = time.monotonic() + self.start_timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.tail()}")
            r = subprocess.run([ray_executable(), "status", "--address", self.address], capture_output=True,
                               text=True, env=env, timeout=30)
            if r.returncode == 0:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the Ray cluster did not come up in {self.start_timeout_s:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            with open(os.path.join(self.temp_dir, "ray-start.log")) as fh:
                return fh.read()[-n:]
        except OSError:
            return ""

    def session_pids(self) -> typing.List[int]:
        """Every live process of the cluster's session (``ray start`` is its leader)."""
        if self.proc is None:
            return []
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.getsid(int(name)) == self.proc.pid:
                        out.append(int(name))
                except OSError:
                    continue
        return out

    def kill(self) -> None:
        """SIGKILL every process of the cluster at once (a crashed head), then remove its files."""
        if self.proc is None:
            return
        for _ in range(3):
            pids = self.session_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.3)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        self.proc = None
        if self.log is not None:
            self.log.close()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
