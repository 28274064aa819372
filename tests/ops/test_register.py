"""`natix-miner card` and `natix-miner register` against a local NATIX-like server that verifies the
sr25519 signature with the hotkey's public key (bittensor's Keypair), then reports status."""

import http.server
import json
import os
import threading
import time

import pytest

from natix_miner.cli import main
from natix_miner.ops.registration import RegistrationClient, RegistrationError, build_registration
from tests.support.ops_support import write_profile

SPEC_KEYS = {"uid", "message", "natix_public_key", "natix_signature", "type", "model_repo"}


class NatixServer:
    """POST /participants/register verifies; GET /participants/registration-status/<uid> walks
    queued -> processing -> <final> (final: succeeded, failed, or never)."""

    def __init__(self, final: str = "succeeded", polls_before_final: int = 2):
        self.final, self.polls_before_final = final, polls_before_final
        self.received, self.polls = [], {}
        server = self

        class H(http.server.BaseHTTPRequestHandler):
            def _json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802
                from bittensor_wallet import Keypair

                if self.path != "/participants/register":
                    return self._json(404, {"detail": "Not Found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.received.append(body)
                if set(body) != SPEC_KEYS:
                    return self._json(422, {"detail": f"fields {sorted(body)}"})
                if abs(time.time() - int(body["message"])) > 60:
                    return self._json(400, {"detail": "stale timestamp"})
                pub = Keypair(ss58_address=body["natix_public_key"])
                if not pub.verify(body["message"].encode(), bytes.fromhex(body["natix_signature"])):
                    return self._json(401, {"detail": "invalid signature"})
                server.polls[body["uid"]] = 0
                self._json(202, {"detail": "Registration queued"})

            def do_GET(self):  # noqa: N802
                prefix = "/participants/registration-status/"
                uid = self.path[len(prefix):] if self.path.startswith(prefix) else None
                if uid not in server.polls:
                    return self._json(404, {"detail": "unknown uid"})
                server.polls[uid] += 1
                n = server.polls[uid]
                if n <= server.polls_before_final or server.final == "never":
                    return self._json(200, {"uid": uid, "status": "queued" if n == 1 else "processing"})
                if server.final == "failed":
                    return self._json(200, {"uid": uid, "status": "failed", "error_message": "model repo not found"})
                return self._json(200, {"uid": uid, "status": "succeeded"})

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def natix():
    servers = []

    def make(**kw):
        servers.append(NatixServer(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture()
def identity(tmp_path, miner_wallet):
    """CLI flags naming the session's miner wallet files and a profile."""
    prof = write_profile(tmp_path / "p.yaml", [("a", "timm", {})], [("t", ["a"], 1.0)])
    root = os.path.dirname(os.path.dirname(os.path.dirname(miner_wallet.hotkey_file.path)))
    return ["--profile", prof, "--wallet.path", root, "--wallet.name", miner_wallet.name,
            "--wallet.hotkey", miner_wallet.hotkey_str]


def test_register_signs_posts_and_polls(natix, identity, miner_wallet, capsys):
    srv = natix()
    rc = main(["register", "--uid", "42", "--model-repo", "acme/roadwork", "--base-url", srv.url,
               "--poll-interval", "0.05", *identity])
    assert rc == 0, capsys.readouterr().err
    [body] = srv.received
    assert set(body) == SPEC_KEYS and body["type"] == "miner" and body["uid"] == "42"
    assert body["natix_public_key"] == miner_wallet.hotkey.ss58_address
    assert body["model_repo"] == "acme/roadwork"
    assert srv.polls["42"] == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "succeeded"


def test_register_reports_failure_and_timeout(natix, identity, capsys):
    failing = natix(final="failed")
    assert main(["register", "--uid", "7", "--model-repo", "acme/x", "--base-url", failing.url,
                 "--poll-interval", "0.05", *identity]) == 1
    assert "model repo not found" in capsys.readouterr().err
    stuck = natix(final="never")
    t0 = time.monotonic()
    assert main(["register", "--uid", "8", "--model-repo", "acme/x", "--base-url", stuck.url,
                 "--poll-interval", "0.05", "--poll-timeout", "0.5", *identity]) == 2
    assert time.monotonic() - t0 < 10
    assert "still processing" in capsys.readouterr().err


def test_server_rejects_a_signature_from_another_key(natix, miner_wallet, validator_wallet):
    srv = natix()
    payload = build_registration(miner_wallet.hotkey, 3, "acme/roadwork")
    forged = build_registration(validator_wallet.hotkey, 3, "acme/roadwork")
    payload["natix_signature"] = forged["natix_signature"]
    with pytest.raises(RegistrationError, match="HTTP 401: invalid signature"):
        RegistrationClient(srv.url).register(payload)
    good = build_registration(miner_wallet.hotkey, 3, "acme/roadwork")
    assert RegistrationClient(srv.url + "/").register(good) == {"detail": "Registration queued"}


def test_register_errors_are_clear(tmp_path):
    from natix_miner.ops.registration import RegistrationClient

    with pytest.raises(ValueError, match="model-repo"):
        build_registration(object(), 1, "")
    with pytest.raises(ValueError, match="http"):
        RegistrationClient("hydra.natix.network")
    with pytest.raises(RegistrationError, match="failed: ConnectionError"):
        from tests.support.ops_support import free_port

        RegistrationClient(f"http://127.0.0.1:{free_port()}").register({"uid": "1"})


def test_card_writes_exactly_the_spec_fields(tmp_path, identity, miner_wallet):
    out = tmp_path / "repo" / "model_card.json"
    t0 = int(time.time())
    assert main(["card", "--model-name", "acme-roadwork-cascade", "--description", "ConvNeXt + DINOv2 cascade",
                 "--model-version", "1.2.3", "--output", str(out), *identity]) == 0
    card = json.loads(out.read_text())
    assert list(card) == ["model_name", "description", "version", "submitted_by", "submission_time"]
    assert card["submitted_by"] == miner_wallet.hotkey.ss58_address
    assert card["version"] == "1.2.3" and card["model_name"] == "acme-roadwork-cascade"
    assert isinstance(card["submission_time"], int) and t0 <= card["submission_time"] <= time.time() + 1


def test_card_validation(tmp_path):
    from natix_miner.ops.card import CardError, build_card

    ss58 = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
    with pytest.raises(CardError, match="X.Y.Z"):
        build_card("m", "d", "1.2", ss58)
    with pytest.raises(CardError, match="ss58"):
        build_card("m", "d", "1.2.3", "not-an-address")
    with pytest.raises(CardError, match="empty"):
        build_card(" ", "d", "1.2.3", ss58)
    assert build_card("m", "d", "0.0.1", ss58, submission_time=5)["submission_time"] == 5


def test_card_without_a_wallet_says_what_to_do(tmp_path, capsys):
    prof = write_profile(tmp_path / "p.yaml", [("a", "timm", {})], [("t", ["a"], 1.0)])
    rc = main(["card", "--profile", prof, "--wallet.path", str(tmp_path / "none"), "--model-name", "m",
               "--model-version", "1.0.0"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "Vault" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_register_finds_its_uid_on_chain(tmp_path, monkeypatch, capsys):
    """Without --uid, `register` reads the hotkey's UID from the metagraph (the in-memory chain)."""
    from natix_miner.miner import neuron
    from natix_miner.miner.wallet import ephemeral_wallet
    from tests.miner.test_chain import LocalChain

    w = ephemeral_wallet("reg", "hk", str(tmp_path / "w"))
    chain = LocalChain(netuid=323)
    for hk in ("5A", "5B", "5C"):
        chain.register(hk)
    chain.register(w.hotkey.ss58_address)  # uid 3
    seen = []
    monkeypatch.setattr(neuron, "connect_chain", lambda cfg: seen.append(cfg.chain) or chain)
    srv = NatixServer(polls_before_final=0)
    flags = ["--model-repo", "acme/roadwork", "--base-url", srv.url, "--poll-interval", "0.05",
             "--wallet.path", str(tmp_path / "w"), "--wallet.name", "reg", "--wallet.hotkey", "hk",
             "--netuid", "323", "--subtensor.network", "test"]
    try:
        assert main(["register", *flags]) == 0
        assert srv.received[-1]["uid"] == "3" and seen[0].netuid == 323 and seen[0].network == "test"
        assert "is uid 3 on netuid 323" in capsys.readouterr().err
        with chain.lock:
            del chain.neurons[w.hotkey.ss58_address]
        assert main(["register", *flags]) == 1
        err = capsys.readouterr().err
        assert "error: hotkey" in err and "not registered on netuid 323" in err and "--uid" in err
    finally:
        srv.close()
