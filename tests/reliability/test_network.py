"""Network-facing attacks on a real axon on loopback (issue 19, items 1, 2, 3, 4, 9, 10).

Each test attacks a real miner (real bittensor axon, real dendrites for the validators) with raw
sockets, lowered caps so every attack is a few seconds, and checks that validators are still
answered: stranger bodies on every route are refused before they are read, a reconnecting
slow-loris and a low-stake validator's slow bodies do not lock the top validator out, priority
comes from the signed hotkey only, a captured request cannot be replayed after a restart, and the
metrics server survives idle connections under a low file limit.
"""

from tests.support.paths import REPO_ROOT
import asyncio
import json
import os
import socket
import stat
import threading
import time

import pytest

from natix_miner.engine import Engine
from natix_miner.synth.hostile import cases
from natix_miner.miner.local import MinerThread, loopback_dendrite
from natix_miner.miner.wallet import ephemeral_wallet
from natix_miner.ops.health import OpsServer
from natix_miner.protocol import ImageSynapse
from tests.support.engine_experts import make_profile
from tests.support.reliability_support import RecordingHooks, miner_config, query, valid, validators

JPEG = None


def _jpeg() -> str:
    global JPEG
    if JPEG is None:
        JPEG = cases()[0].text
    return JPEG


def _brightness(tmp_path, **top):
    return make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["b"]}], **top)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def signed_request(wallet, m, synapse, timeout: float = 9.0):
    """(path, headers, body dict) of a request signed by ``wallet``, as its dendrite would send it."""
    d = loopback_dendrite(wallet)
    syn = d.preprocess_synapse_for_request(m.info(), synapse, timeout=timeout)
    return f"/{syn.name}", syn.to_headers(), syn.model_dump()


def raw_head(port: int, path: str, headers: dict, length: int, src: str = "127.0.0.1") -> socket.socket:
    """Open a connection from ``src`` and send a POST head announcing ``length`` body bytes (none sent)."""
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("content-length", "host", "content-type")]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def read_status(s: socket.socket, timeout: float) -> int:
    """The status code of the response on ``s``; -1 if the server closed or nothing came in time."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            got = s.recv(4096)
            if not got:
                return -1
            data += got
    except (socket.timeout, OSError):
        return -1
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1") else -1


def post(port: int, path: str, headers: dict, body: bytes, src: str = "127.0.0.1", timeout: float = 10) -> int:
    s = raw_head(port, path, headers, len(body), src)
    try:
        s.sendall(body)
        return read_status(s, timeout)
    finally:
        s.close()


# -- item 2: every route is blacklisted before its body is read -------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    vals = validators(tmp, [1000])
    cfg = miner_config(tmp, vals, axon={"max_body_bytes": 4 * 1024 * 1024})
    w = ephemeral_wallet("m", "m", str(tmp / "miner"))
    hooks = RecordingHooks()
    with MinerThread(cfg, engine=Engine(_brightness(tmp)), hooks=hooks, wallet=w) as m:
        yield m, vals, hooks, tmp


def test_stranger_is_refused_on_every_route_before_its_body_is_read(plain):
    """A stranger signs its own requests correctly and announces a 3 MB body on every route the
    axon serves (bittensor's built-in ``/Synapse`` included) but never sends it: each answer must
    come at once, 403 on the synapse routes, never 200. Then 8 real 3 MB bodies on every route at
    once leave the miner's memory where it was."""
    import bittensor as bt

    m, vals, _, tmp = plain
    stranger = ephemeral_wallet("s", "s", str(tmp / "stranger"))
    axon = m.miner.axon
    routes = list(axon.app.routes) + list(axon.router.routes)  # FastAPI keeps included routers apart
    paths = sorted({getattr(r, "path", "") for r in routes} - {""})
    assert "/Synapse" in paths and "/ImageSynapse" in paths
    requests_ = {}
    for path in paths:
        name = path.strip("/").split("/")[0]
        cls = axon.forward_class_types.get(name, bt.Synapse)
        _, headers, body = signed_request(stranger, m, cls())
        requests_[path] = (headers, json.dumps(body).encode())
        s = raw_head(m.port, path, headers, 3 * 1024 * 1024)
        try:
            t0 = time.monotonic()
            status = read_status(s, 3.0)
            took = time.monotonic() - t0
        finally:
            s.close()
        assert status != -1, f"{path}: no answer without the body: the server waited to read it ({took:.1f}s)"
        assert status != 200 and 400 <= status < 600, (path, status)
        assert status == (403 if name in axon.forward_class_types else 404), (path, status)
    pad = b" " * (3 * 1024 * 1024)
    bodies = {path: body[:-1] + pad + b"}" for path, (_, body) in requests_.items()}  # built before measuring
    fresh = []  # a fresh signature (nonce) for each request: the replay guard would refuse a reused one
    for path in paths:
        name = path.strip("/").split("/")[0]
        for _ in range(8):
            fresh.append((path, signed_request(stranger, m, axon.forward_class_types.get(name, bt.Synapse)())[1]))
    before = _rss_mb()
    results = []

    def send(path, headers):
        results.append((path, post(m.port, path, headers, bodies[path], timeout=20)))

    threads = [threading.Thread(target=send, args=pf) for pf in fresh]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    grown = _rss_mb() - before
    print(f"\nstranger bodies: {len(results)} x 3 MB on {len(paths)} routes, codes {sorted(set(c for _, c in results))}, "
          f"RSS +{grown:.1f} MB")
    assert all(code != 200 for _, code in results), results
    assert grown < 40, f"RSS grew {grown:.0f} MB on refused bodies"


async def test_validator_still_answered_on_every_synapse_route(plain):
    m, vals, _, _ = plain
    r, took = await query(vals[0][0], m.info(), ImageSynapse(image=_jpeg()))
    assert r.axon.status_code == 200 and valid(r.prediction)
    import bittensor as bt

    r, _ = await query(vals[0][0], m.info(), bt.Synapse())  # the built-in ping route, for validators only
    assert r.axon.status_code == 200


# -- item 4: priority from the signed hotkey, never from the body ------------------------------

async def test_body_spoofed_hotkey_gets_its_signed_stake_not_the_claimed_one(tmp_path):
    """One slow slot, one waiting place. A stake-500 validator waits; a stake-10 validator signs its
    own request but writes the stake-1000 validator's hotkey in the JSON body. Priority must come
    from the signed header: the stake-10 caller is shed, the stake-500 one answered."""
    vals = validators(tmp_path, [1000, 500, 10])
    top, mid, low = (w for w, _ in vals)
    prof = make_profile(tmp_path, experts=[{"name": "s", "family": "engine_test_slow", "options": {"seconds": 1.0}}],
                        tiers=[{"name": "t", "experts": ["s"], "budget_s": 6}], deadline_s=7.0,
                        fallback_probability=0.3, cache={"max_entries": 0})
    hooks = RecordingHooks()
    cfg = miner_config(tmp_path, vals, axon={"max_inflight": 1, "max_waiting": 1})
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with MinerThread(cfg, engine=Engine(prof), hooks=hooks, wallet=w) as m:
        busy = asyncio.create_task(query(top, m.info(), ImageSynapse(image=_jpeg())))
        await asyncio.sleep(0.4)
        waiting = asyncio.create_task(query(mid, m.info(), ImageSynapse(image=cases()[1].text)))
        await asyncio.sleep(0.4)
        path, headers, body = signed_request(low, m, ImageSynapse(image=cases()[2].text))
        body["dendrite"]["hotkey"] = top.hotkey.ss58_address  # the lie, outside the signature
        status = await asyncio.get_running_loop().run_in_executor(
            None, lambda: post(m.port, path, headers, json.dumps(body).encode()))
        assert status == 200
        (r_busy, _), (r_mid, _) = await asyncio.gather(busy, waiting)
        outcomes = {rec["hotkey"]: rec["outcome"] for rec in hooks.requests}
        assert outcomes[mid.hotkey.ss58_address] == "answered", outcomes
        assert outcomes[low.hotkey.ss58_address] == "shed", outcomes  # recorded under its signed hotkey
        assert r_mid.axon.status_code == 200 and r_mid.prediction != pytest.approx(0.3)


# -- item 9: replay after a restart ------------------------------------------------------------

def _start(tmp_path, vals, w, state):
    cfg = miner_config(tmp_path, vals, axon={"state_dir": str(state)})
    return MinerThread(cfg, engine=Engine(_brightness(tmp_path)), wallet=w)


async def test_captured_request_cannot_be_replayed_after_a_restart(tmp_path):
    """A validator's request is captured on the wire. After the miner restarts it is replayed as
    is, with unsigned header fields changed (old dendrite version, a huge timeout) and with another
    image: all refused (401). A fresh request from the same validator is still answered."""
    vals = validators(tmp_path, [1000])
    val = vals[0][0]
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    state = tmp_path / "state"
    with _start(tmp_path, vals, w, state) as m:
        path, headers, body = signed_request(val, m, ImageSynapse(image=_jpeg()))
        raw = json.dumps(body).encode()
        assert post(m.port, path, headers, raw) == 200
        assert post(m.port, path, headers, raw) == 401  # bittensor's own check, same process
        port = m.port
    files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs]
    assert files, "no nonce file in the state dir"
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    other = dict(body, image=cases()[1].text)
    with _start(tmp_path, vals, w, state) as m:
        assert m.port != port or True
        tries = {
            "as is": (headers, raw),
            "old version": ({**headers, "bt_header_dendrite_version": "700"}, raw),
            "huge timeout": ({**headers, "timeout": "100000000"}, raw),
            "another image": ({**headers, "bt_header_dendrite_version": "700"}, json.dumps(other).encode()),
        }
        got = {name: post(m.port, path, h, b) for name, (h, b) in tries.items()}
        assert got == {name: 401 for name in tries}, got
        r, _ = await query(val, m.info(), ImageSynapse(image=_jpeg()))
        assert r.axon.status_code == 200 and valid(r.prediction)


def test_old_nonce_with_widened_timeout_is_refused(tmp_path):
    """A request signed 40 s ago (older than any window) whose unsigned ``timeout`` header claims
    a 100000 s timeout is refused, on the first sight of its dendrite, in a fresh miner."""
    vals = validators(tmp_path, [1000])
    val = vals[0][0]
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with _start(tmp_path, vals, w, tmp_path / "state") as m:
        d = loopback_dendrite(val)
        syn = d.preprocess_synapse_for_request(m.info(), ImageSynapse(image=_jpeg()), timeout=9.0)
        syn.dendrite.nonce = time.time_ns() - 40 * 10**9
        message = f"{syn.dendrite.nonce}.{syn.dendrite.hotkey}.{syn.axon.hotkey}.{syn.dendrite.uuid}.{syn.body_hash}"
        syn.dendrite.signature = f"0x{val.hotkey.sign(message).hex()}"
        headers = {**syn.to_headers(), "timeout": "100000"}
        assert post(m.port, "/ImageSynapse", headers, json.dumps(syn.model_dump()).encode()) == 401


# -- items 1 and 3: reconnecting slow-loris, slow bodies from a registered low-stake validator ---

class Attacker:
    """``n`` connections from ``srcs`` (loopback addresses), each reopened the moment the server
    closes it. ``first`` (bytes, or a callable giving the bytes for each new connection) is sent on
    connect; then one byte every ``trickle_s`` (None: stay silent). Counts reopenings."""

    def __init__(self, port: int, n: int, srcs, first=b"", trickle_s=None):
        self.port, self.n, self.srcs, self.first, self.trickle_s = port, n, list(srcs), first, trickle_s
        self.reopened = 0
        self.refused = 0
        self.socks = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _open(self, sel, i):
        import selectors

        s = socket.socket()
        try:
            s.bind((self.srcs[i % len(self.srcs)], 0))
            s.settimeout(2)
            s.connect(("127.0.0.1", self.port))
            first = self.first() if callable(self.first) else self.first
            if first:
                s.sendall(first)
            s.setblocking(False)
        except OSError:
            self.refused += 1
            s.close()
            return
        sel.register(s, selectors.EVENT_READ, i)
        self.socks[s] = i

    def _run(self):
        import selectors

        sel = selectors.DefaultSelector()
        for i in range(self.n):
            self._open(sel, i)
        last_trickle = time.monotonic()
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.02):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server: come straight back
                    sel.unregister(s)
                    self.socks.pop(s, None)
                    s.close()
                    self.reopened += 1
                    self._open(sel, key.data)
            missing = self.n - len(self.socks)
            for i in range(missing):
                self._open(sel, i)
            if self.trickle_s and time.monotonic() - last_trickle >= self.trickle_s:
                last_trickle = time.monotonic()
                for s in list(self.socks):
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
        for s in list(self.socks):
            sel.unregister(s)
            s.close()


async def _validators_answered(m, wallets, rounds: int):
    """Each validator queries ``rounds`` times (all at once per round): (answered, total, max latency)."""
    answered, total, worst = 0, 0, 0.0
    for r in range(rounds):
        res = await asyncio.gather(*(query(w, m.info(), ImageSynapse(image=cases()[r % 3].text)) for w in wallets))
        for resp, took in res:
            total += 1
            worst = max(worst, took)
            if resp.axon.status_code == 200 and valid(resp.prediction):
                answered += 1
            else:
                print("not answered:", resp.axon.status_code, resp.dendrite.status_code, resp.dendrite.status_message)
    return answered, total, worst


@pytest.mark.slow
async def test_reconnecting_slow_loris_does_not_lock_validators_out(tmp_path):
    """96 idle sockets from six stranger addresses, each reopened as soon as the server closes it,
    against ``max_connections`` 48: every validator query is still answered in time."""
    vals = validators(tmp_path, [1000, 500, 100])
    cfg = miner_config(tmp_path, vals, axon={"max_connections": 48, "max_connections_per_peer": 8,
                                             "reserved_connections": 12, "header_timeout_s": 1.0})
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with MinerThread(cfg, engine=Engine(_brightness(tmp_path)), wallet=w) as m:
        rss0 = _rss_mb()
        with Attacker(m.port, 96, [f"127.0.0.{i}" for i in range(2, 8)], first=b"POST /ImageSynapse HTTP/1.1\r\n") as a:
            answered, total, worst = await _validators_answered(m, [x for x, _ in vals], rounds=4)
            reopened = a.reopened
        gov = m.miner.governor.snapshot()
        print(f"\nslow-loris: validators answered {answered}/{total}, worst latency {worst:.2f}s, "
              f"attacker reopened {reopened}, shed {gov['shed']}, peak open {gov['peak_open']}, "
              f"RSS +{_rss_mb() - rss0:.0f} MB")
        assert answered == total, (answered, total)
        assert worst < 5.0
        assert reopened > 0 and sum(gov["shed"].values()) > 0  # the attack was on, and met
        assert gov["peak_open"] <= 48


@pytest.mark.slow
async def test_slow_bodies_of_a_low_stake_validator_do_not_starve_the_top_one(tmp_path):
    """A registered stake-10 validator keeps 64 signed requests open on ``/ImageSynapse`` from four
    addresses, each announcing a 1 MB body and trickling it, reopened as soon as closed. The
    stake-1000 validator is answered every time."""
    vals = validators(tmp_path, [1000, 10])
    top, low = vals[0][0], vals[1][0]
    cfg = miner_config(tmp_path, vals, axon={"max_connections": 32, "max_connections_per_peer": 8,
                                             "reserved_connections": 8, "max_requests_per_hotkey": 4,
                                             "header_timeout_s": 1.0, "body_timeout_s": 1.0})
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with MinerThread(cfg, engine=Engine(_brightness(tmp_path)), wallet=w) as m:
        d = loopback_dendrite(low)
        heads = []
        for _ in range(600):  # fresh signed heads: the replay guard refuses a reused nonce
            syn = d.preprocess_synapse_for_request(m.info(), ImageSynapse(image=""), timeout=9.0)
            lines = ["POST /ImageSynapse HTTP/1.1", "Host: x", "Content-Type: application/json",
                     "Content-Length: 1048576"] + [f"{k}: {v}" for k, v in syn.to_headers().items()]
            heads.append(("\r\n".join(lines) + "\r\n\r\n{").encode())
        it = iter(heads)
        rss0 = _rss_mb()
        with Attacker(m.port, 64, [f"127.0.0.{i}" for i in range(2, 6)], first=lambda: next(it, b""),
                      trickle_s=0.2) as a:
            answered, total, worst = await _validators_answered(m, [top], rounds=6)
            reopened = a.reopened
        gov = m.miner.governor.snapshot()
        print(f"\nslow bodies: top validator answered {answered}/{total}, worst latency {worst:.2f}s, "
              f"attacker reopened {reopened}, shed {gov['shed']}, RSS +{_rss_mb() - rss0:.0f} MB")
        assert answered == total, (answered, total)
        assert worst < 5.0
        assert reopened > 0


# -- item 10: the metrics/health server under idle connections and a low file limit ------------

_OPS_CHILD = r"""
import logging, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from natix_miner.ops.health import OpsServer
srv = OpsServer("127.0.0.1", 0, render=lambda: (b"up 1\n", "text/plain"), health=lambda: {"status": "ok"},
                ready=lambda: (True, {"ready": True})).start()
print(srv.port, flush=True)
sys.stdin.read()
srv.stop()
"""


@pytest.mark.slow
@pytest.mark.parametrize("nofile", [128, 40])
def test_metrics_server_survives_a_thousand_idle_connections_under_a_low_file_limit(nofile):
    """The ops server runs in a process limited to ``nofile`` open files (40: fewer than its own
    connection cap, so accepting fails with EMFILE); 1,000 idle connections are opened to it (and
    300 more between the probes). ``/healthz`` still answers every time, fast, and the server logs
    that it shed connections."""
    import resource
    import subprocess
    import sys

    import requests

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    child = subprocess.Popen([sys.executable, "-c", _OPS_CHILD, str(nofile)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    idle = []
    try:
        port = int(child.stdout.readline())
        for _ in range(1000):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(0.5)
        took = []
        for i in range(5):
            t0 = time.monotonic()
            r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            took.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["status"] == "ok"
            for _ in range(60):  # more idle sockets arrive between the probes
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                except OSError:
                    break
        assert max(took) < 2.0, took
        assert child.poll() is None  # the server process is alive
    finally:
        for s in idle:
            s.close()
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
    log = child.stderr.read()
    print(f"\nmetrics server (files {nofile}): /healthz {max(took):.3f}s worst with {len(idle)} idle connections "
          f"opened; {log.strip().splitlines()[-1] if log.strip() else ''}")
    assert "shed" in log, log[-2000:]
    if nofile < OpsServer.MAX_CONNECTIONS:
        assert "out_of_files" in log, log[-2000:]


# -- the pieces on their own (no network) -------------------------------------------------------

class _Syn:
    """The fields of a synapse the replay guard reads."""

    def __init__(self, wallet, axon_hotkey, nonce, uuid="u-1", body_hash="h"):
        from types import SimpleNamespace

        message = f"{nonce}.{wallet.hotkey.ss58_address}.{axon_hotkey}.{uuid}.{body_hash}"
        self.dendrite = SimpleNamespace(hotkey=wallet.hotkey.ss58_address, nonce=nonce, uuid=uuid,
                                        signature=f"0x{wallet.hotkey.sign(message).hex()}")
        self.computed_body_hash = body_hash


def test_replay_guard_window_file_and_restart(tmp_path):
    from natix_miner.miner.nonces import ReplayError, ReplayGuard, SignatureError

    val = ephemeral_wallet("v", "v", str(tmp_path / "v"))
    now = [1_000 * 10**9]
    path = str(tmp_path / "state" / "nonces.log")
    g = ReplayGuard(path, window_s=30, clock_ns=lambda: now[0])
    a, b = _Syn(val, "AX", now[0] - 5 * 10**9), _Syn(val, "AX", now[0] - 6 * 10**9)
    g.verify(a, "AX")
    g.verify(b, "AX")  # older than the last one, not seen: accepted (concurrent requests arrive out of order)
    with pytest.raises(ReplayError):
        g.verify(a, "AX")
    with pytest.raises(ReplayError):
        g.verify(_Syn(val, "AX", now[0] - 31 * 10**9), "AX")  # outside the window
    with pytest.raises(SignatureError):
        g.verify(_Syn(val, "AX", now[0]), "OTHER-AXON")  # signed for another miner
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    g.close()
    with open(path, "a") as f:
        f.write("torn-line-without-nonce")
    g2 = ReplayGuard(path, window_s=30, clock_ns=lambda: now[0])  # a restart
    assert g2.live == 2
    with pytest.raises(ReplayError):
        g2.verify(a, "AX")
    now[0] += 40 * 10**9
    g3 = ReplayGuard(path, window_s=30, clock_ns=lambda: now[0])  # later: the expired nonces are dropped
    assert g3.live == 0 and open(path).read() == ""


def test_replay_guard_rewrites_its_file_when_it_grows(tmp_path):
    from natix_miner.miner.nonces import ReplayGuard

    val = ephemeral_wallet("v", "v", str(tmp_path / "v"))
    now = [5_000 * 10**9]
    path = str(tmp_path / "nonces.log")
    g = ReplayGuard(path, window_s=1, clock_ns=lambda: now[0])
    syns = [_Syn(val, "AX", now[0] + i) for i in range(3000)]
    for i, syn in enumerate(syns):
        now[0] = syn.dendrite.nonce + (i // 500) * 2 * 10**9  # time moves on: old nonces expire
        try:
            g.verify(syn, "AX")
        except Exception:
            pass
    lines = open(path).read().count("\n")
    assert lines < 3000 and g.live < 1000, (lines, g.live)


class _Conn:
    class _T:
        def __init__(self):
            self.closed = False

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

    def __init__(self, peer):
        self.peer, self.transport = peer, self._T()


def test_governor_sheds_the_busiest_address_and_keeps_verified_connections():
    from natix_miner.miner.limits import ConnectionGovernor

    gov = ConnectionGovernor(max_connections=8, max_per_peer=3, reserved=2, max_per_hotkey=2)
    attackers = [_Conn("10.0.0.9") for _ in range(3)]
    assert all(gov.opened(c) for c in attackers)
    extra = _Conn("10.0.0.9")
    assert gov.opened(extra) and attackers[0].transport.closed  # per address: its own oldest goes
    val = _Conn("10.0.0.1")
    assert gov.opened(val)
    gov.busy(val)
    gov.trust(val, "5Val")
    others = [_Conn(f"10.0.1.{i}") for i in range(3)]
    for c in others:
        assert gov.opened(c)
    assert gov.untrusted == 6 and not val.transport.closed  # the cap on unverified ones: 8 - 2
    newcomer = _Conn("10.0.2.1")
    assert gov.opened(newcomer)
    assert sum(c.transport.closed for c in attackers[1:] + [extra]) == 1  # the busiest address paid
    assert not val.transport.closed and all(not c.transport.closed for c in others)
    assert gov.begin("5Val") and gov.begin("5Val") and not gov.begin("5Val")  # per-hotkey cap
    gov.end("5Val")
    assert gov.begin("5Val")
    for c in [val, newcomer, extra] + attackers + others:
        gov.closed(c)
    assert gov.open == 0 and gov.untrusted == 0 and gov.shed["per_peer"] == 1 and gov.shed["stranger_idle"] == 1


def test_governor_spares_a_lone_fresh_connection_when_strangers_are_mid_request():
    """Every stranger socket is running a request (its 401/403 not sent yet); the only idle one is a
    validator's fresh connection from its own address: a newcomer does not shed it within the grace
    time (the newcomer takes a reserved slot instead), but does once it has idled past it."""
    from natix_miner.miner.limits import ConnectionGovernor

    now = [100.0]
    gov = ConnectionGovernor(max_connections=6, max_per_peer=4, reserved=2, max_per_hotkey=2, clock=lambda: now[0])
    busy = [_Conn("10.0.0.9") for _ in range(3)]
    for c in busy:
        assert gov.opened(c)
        gov.busy(c)
    val = _Conn("10.0.0.1")
    assert gov.opened(val)  # untrusted now 4 = the cap (6 - 2)
    late = _Conn("10.0.0.9")
    assert gov.opened(late) and not val.transport.closed
    now[0] += 2.0  # the validator never sent a head: now it is fair game like any idle socket
    gov.busy(late)
    assert gov.opened(_Conn("10.0.0.7")) and val.transport.closed


def test_unwritable_state_dir_is_a_configuration_error(tmp_path):
    from natix_miner.miner.errors import ConfigError

    vals = validators(tmp_path, [1000])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with pytest.raises(RuntimeError) as info:
        with _start(tmp_path, vals, w, blocker / "state"):
            pass
    assert isinstance(info.value.__cause__, ConfigError), info.value
    assert "--axon.state_dir" in str(info.value.__cause__)


def test_a_vault_wallet_keeps_its_nonces_in_the_home_state_dir_not_the_cwd(tmp_path, monkeypatch):
    """A wallet read from Vault has no folder (path "<memory>"): the nonce file goes to
    ~/.natix-miner/state, never to ./<memory>/natix-state under whatever folder pm2 started in."""
    from types import SimpleNamespace

    from natix_miner.config import AxonConfig
    from natix_miner.miner.neuron import Miner

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    w = ephemeral_wallet("m", "m", str(tmp_path / "w"))
    fake = SimpleNamespace(cfg=SimpleNamespace(axon=AxonConfig()),
                           wallet=SimpleNamespace(path="<memory>", hotkey=w.hotkey))
    guard = Miner._replay_guard(fake)
    assert list(cwd.iterdir()) == []
    assert (home / ".natix-miner" / "state").is_dir(), guard
