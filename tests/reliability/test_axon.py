"""Hostile requests through a real axon and real dendrites: every hostile image gets a valid answer,
oversized bodies are refused before they are read, and a blacklisted caller's bytes never reach
the image decoder. The process survives all of it and keeps answering.
"""

import json
import socket
import time

import pytest
import requests

from natix_miner.engine import Engine
from natix_miner.imaging import decode
from natix_miner.synth.hostile import cases, png_bomb
from natix_miner.miner.local import MinerThread, loopback_dendrite
from natix_miner.miner.wallet import ephemeral_wallet
from natix_miner.protocol import ImageSynapse
from tests.support.engine_experts import make_profile, tiny_timm
from tests.support.reliability_support import RecordingHooks, miner_config, query, valid, validators

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # bombs on purpose

BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A miner with a real torch model (random weights) behind a real axon, body limit 4 MB."""
    tmp = tmp_path_factory.mktemp("axon")
    vals = validators(tmp, [5000])
    prof = make_profile(tmp, experts=[tiny_timm("fast")], tiers=[{"name": "t0", "experts": ["fast"], "budget_s": 5}],
                        fallback_probability=0.3, cache={"max_entries": 0}, deadline_s=7.0,
                        max_image_bytes=2 * 1024 * 1024)
    hooks = RecordingHooks()
    engine = Engine(prof)
    miner_wallet = ephemeral_wallet("m", "m", str(tmp / "miner"))
    cfg = miner_config(tmp, vals, axon={"max_body_bytes": BODY_LIMIT})
    with MinerThread(cfg, engine=engine, hooks=hooks, wallet=miner_wallet) as m:
        yield m, vals[0][0], hooks, engine


async def _alive(m, wallet, jpeg):
    r, took = await query(wallet, m.info(), ImageSynapse(image=jpeg))
    assert r.axon.status_code == 200 and valid(r.prediction) and took < 9
    return r


async def test_every_hostile_image_gets_a_valid_answer_in_time(served):
    m, wallet, hooks, _ = served
    for case in cases():
        r, took = await query(wallet, m.info(), ImageSynapse(image=case.text))
        assert r.axon.status_code == 200, (case.name, r.axon.status_message, r.dendrite.status_message)
        assert valid(r.prediction), case.name
        assert took < 9.0, case.name
        rec = hooks.requests[-1]
        if case.expect == "answer":
            assert rec["outcome"] == "answered", (case.name, rec)
        else:
            assert rec["outcome"] == "fallback" and rec["fallback_reason"] == f"bad_image:{case.reason}", \
                (case.name, rec)
            assert r.prediction == pytest.approx(0.3)


def _signed(wallet, m, image: str):
    d = loopback_dendrite(wallet)
    syn = d.preprocess_synapse_for_request(m.info(), ImageSynapse(image=image), timeout=9.0)
    return f"http://127.0.0.1:{m.port}/ImageSynapse", syn.to_headers(), syn.model_dump(exclude={"dendrite", "axon"})


async def test_tens_of_mb_body_is_refused_with_413_before_parsing(served):
    m, wallet, hooks, engine = served
    before = engine.requests
    big = "A" * (30 * 1024 * 1024)
    url, headers, body = _signed(wallet, m, big)
    t0 = time.monotonic()
    r = requests.post(url, headers=headers, data=json.dumps(body), timeout=30)
    assert r.status_code == 413
    r2, took = await query(wallet, m.info(), ImageSynapse(image=big), timeout=12.0)  # the validators' client
    assert r2.prediction == -1.0 and took < 12.0
    assert r2.axon.status_code == 413, (r2.axon, r2.dendrite)
    assert engine.requests == before  # never reached the engine
    assert time.monotonic() - t0 < 30
    await _alive(m, wallet, cases()[0].text)


def _chunked_post(port: int, path: str, headers: dict, total: int, chunk: int = 1 << 20) -> int:
    """POST ``total`` bytes with Transfer-Encoding: chunked (no Content-Length); return the status."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Transfer-Encoding: chunked",
                "Content-Type: application/json"] + [f"{k}: {v}" for k, v in headers.items()
                                                     if k.lower() not in ("content-length", "host")]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        payload = b"A" * chunk
        try:
            while sent < total:
                s.sendall(b"%x\r\n" % len(payload) + payload + b"\r\n")
                sent += len(payload)
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: that is the point
        data = b""
        while b"\r\n" not in data:
            got = s.recv(4096)
            if not got:
                break
            data += got
        return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1") else -1
    finally:
        s.close()


async def test_chunked_body_without_length_is_cut_off(served):
    m, wallet, _, engine = served
    before = engine.requests
    _, headers, _ = _signed(wallet, m, "x")
    status = _chunked_post(m.port, "/ImageSynapse", headers, 40 * 1024 * 1024)
    assert status in (400, 413, -1), status  # refused (or the connection dropped), never served
    assert engine.requests == before
    await _alive(m, wallet, cases()[0].text)


async def test_body_under_the_limit_with_an_oversized_image_gets_the_fallback(served):
    m, wallet, hooks, _ = served
    image = "A" * (3 * 1024 * 1024)  # under the 4 MB body limit, over the profile's 2 MB image cap
    r, took = await query(wallet, m.info(), ImageSynapse(image=image))
    assert r.axon.status_code == 200 and r.prediction == pytest.approx(0.3)
    assert hooks.requests[-1]["fallback_reason"] == "bad_image:too_large"


async def test_blacklisted_callers_bytes_never_reach_the_decoder(served, tmp_path, monkeypatch):
    """Blacklisting happens on the headers, before the body is read or decoded: prove it by counting
    every call into the image parser (a pass-through spy on ``decode._open``)."""
    m, wallet, hooks, engine = served
    calls = []
    real_open = decode._open

    def spy(data):
        calls.append(len(data))
        return real_open(data)

    monkeypatch.setattr(decode, "_open", spy)
    stranger = ephemeral_wallet("stranger", "s", str(tmp_path / "stranger"))
    before = engine.requests
    bomb = next(c.text for c in cases() if c.name == "png_bomb_real_30000")
    for image in (bomb, "garbage!!", cases()[0].text):
        r, _ = await query(stranger, m.info(), ImageSynapse(image=image))
        assert r.axon.status_code == 403 and r.prediction == -1.0
    assert calls == [] and engine.requests == before
    assert [x["hotkey"] for x in hooks.refused[-3:]] == [stranger.hotkey.ss58_address] * 3
    await _alive(m, wallet, cases()[0].text)  # the spy does see an admitted caller's image
    assert calls and engine.requests == before + 1


async def test_unknown_route_and_malformed_json_are_rejected_cleanly(served):
    m, wallet, _, engine = served
    before = engine.requests
    r = requests.post(f"http://127.0.0.1:{m.port}/NoSuchSynapse", data=b"{}", timeout=10)
    assert 400 <= r.status_code < 500
    url, headers, _ = _signed(wallet, m, "x")
    r = requests.post(url, headers=headers, data=b"{not json", timeout=10)
    assert 400 <= r.status_code < 600 and r.status_code != 200
    assert engine.requests == before
    await _alive(m, wallet, cases()[0].text)


def test_bomb_payload_is_small_on_the_wire():
    """The 900 Mpx bomb fits easily under any body limit: only the pixel cap stops it."""
    assert len(png_bomb(30000, 30000, lie=False)) < 200 * 1024


async def test_idle_connections_beyond_the_limit_are_shed_oldest_first(tmp_path):
    """``axon.max_connections`` bounds open sockets: idle strangers beyond it are not queued behind
    (uvicorn's old 503 for everyone), the oldest idle one is closed to make room, so a validator's
    new connection is served while the hogs stay open."""
    vals = validators(tmp_path, [10])
    prof = make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["b"]}])
    cfg = miner_config(tmp_path, vals, axon={"max_connections": 3, "reserved_connections": 0})
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with MinerThread(cfg, engine=Engine(prof), wallet=w) as m:
        hogs = [socket.create_connection(("127.0.0.1", m.port), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.3)
            await _alive(m, vals[0][0], cases()[0].text)
            hogs[0].settimeout(2)
            assert hogs[0].recv(1) == b"", "the oldest idle connection was not closed"
            assert m.miner.governor.shed["stranger_idle"] >= 1
            assert m.miner.governor.open <= 3
        finally:
            for s in hogs:
                s.close()


async def test_slow_loris_connections_are_closed_and_validators_get_back_in(tmp_path):
    """Three clients trickle header bytes and never finish: with ``max_connections`` 3 they would
    lock everyone out for good. The head deadline (1 s here) closes them; a client whose head is
    slow but arrives in time is served; then a validator is answered without anyone's help."""
    vals = validators(tmp_path, [10])
    prof = make_profile(tmp_path, experts=[{"name": "b", "family": "engine_test_brightness"}],
                        tiers=[{"name": "t", "experts": ["b"]}])
    cfg = miner_config(tmp_path, vals, axon={"max_connections": 4, "header_timeout_s": 1.0})
    w = ephemeral_wallet("m", "m", str(tmp_path / "miner"))
    with MinerThread(cfg, engine=Engine(prof), wallet=w) as m:
        hogs = [socket.create_connection(("127.0.0.1", m.port), timeout=5) for _ in range(3)]
        polite = socket.create_connection(("127.0.0.1", m.port), timeout=5)
        try:
            t0 = time.monotonic()
            for s in hogs:
                s.sendall(b"POST /ImageSynapse HTTP/1.1\r\nHost: x\r\n")
            polite.sendall(b"GET /nothing HTTP/1.1\r\n")
            time.sleep(0.5)
            polite.sendall(b"Host: x\r\nConnection: close\r\n\r\n")  # complete after 0.5 s: in time
            assert _read_response(polite).startswith(b"HTTP/1.1 ")
            closed = []
            for i in range(12):  # keep trickling, one byte every 0.25 s, until the server hangs up
                for s in hogs:
                    if s in closed:
                        continue
                    try:
                        s.sendall(b"X")
                        s.settimeout(0.01)
                        if s.recv(1) == b"":
                            closed.append(s)
                    except socket.timeout:
                        pass
                    except OSError:
                        closed.append(s)
                if len(closed) == len(hogs):
                    break
                time.sleep(0.25)
            took = time.monotonic() - t0
            assert len(closed) == 3, f"{3 - len(closed)} slow-loris connections still open after {took:.1f}s"
            assert 0.9 <= took <= 3.5, took
            await _alive(m, vals[0][0], cases()[0].text)  # served again: the hogs are gone
        finally:
            for s in hogs + [polite]:
                s.close()


def _read_response(s: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers + Content-Length body); b"" if the server closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = s.recv(65536)
        if not got:
            return data
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        got = s.recv(65536)
        if not got:
            break
        body += got
    return head + b"\r\n\r\n" + body


def test_idle_connection_outlives_aiohttp_keepalive_race_window(served):
    """An idle keep-alive connection is not closed by the miner after uvicorn's usual 5 s, so a
    validator's aiohttp session (15 s idle limit) always closes it first: no 'Server disconnected'
    when a dendrite reuses a connection just as the server drops it."""
    m, _, _, _ = served
    s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    request = f"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1:{m.port}\r\n\r\n".encode()
    try:
        s.sendall(request)
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 "), first[:80]
        time.sleep(6.5)
        s.sendall(request)
        second = _read_response(s)
        assert second.startswith(b"HTTP/1.1 "), f"the server closed the idle connection: {second[:80]!r}"
    finally:
        s.close()
