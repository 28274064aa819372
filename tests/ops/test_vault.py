"""The hotkey from a real OpenBao dev server (KV v2): token and AppRole auth, every failure mode."""

import json
import os

import pytest

from natix_miner.config import MinerConfig
from natix_miner.ops import secrets
from natix_miner.ops.secrets import (VaultAuthError, VaultNotConfigured, VaultSealed, VaultSecretInvalid,
                                     VaultSecretMissing, VaultUnreachable, VaultWallet, vault_health,
                                     wallet_from_vault)
from tests.support.ops_support import free_port, start_bao, write_profile


@pytest.fixture(scope="session")
def bao():
    server = start_bao()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hotkey_secret(bao):
    from bittensor_wallet import Keypair

    mnemonic = Keypair.generate_mnemonic(12)
    cold = Keypair.create_from_mnemonic(Keypair.generate_mnemonic(12))
    bao.put("natix/miner-hotkey", {"mnemonic": mnemonic, "coldkey_ss58": cold.ss58_address})
    return {"mnemonic": mnemonic, "hotkey": Keypair.create_from_mnemonic(mnemonic).ss58_address,
            "coldkey": cold.ss58_address}


def _cfg(tmp_path, **vault) -> MinerConfig:
    return MinerConfig.model_validate({"local": True, "wallet": {"path": str(tmp_path / "wallets")},
                                       "vault": {"timeout_s": 3.0, **vault}})


def test_token_auth_builds_the_hotkey_in_memory(bao, hotkey_secret, tmp_path):
    cfg = _cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/miner-hotkey")
    w = wallet_from_vault(cfg)
    assert isinstance(w, VaultWallet)
    assert w.hotkey.ss58_address == hotkey_secret["hotkey"]
    assert w.coldkeypub.ss58_address == hotkey_secret["coldkey"]
    sig = w.hotkey.sign(b"nonce.validator.miner.uuid.hash")
    assert w.hotkeypub.verify(b"nonce.validator.miner.uuid.hash", sig)
    assert w.unlock_hotkey() is w.hotkey
    assert hotkey_secret["mnemonic"] not in repr(w)
    with pytest.raises(Exception, match="never holds the coldkey"):
        w.coldkey  # noqa: B018
    assert not (tmp_path / "wallets").exists()  # nothing written where wallet files would go


def test_load_wallet_prefers_vault_and_writes_nothing(bao, hotkey_secret, tmp_path, monkeypatch):
    from natix_miner.miner.wallet import load_wallet

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = _cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/miner-hotkey")
    w = load_wallet(cfg)
    assert w.hotkey.ss58_address == hotkey_secret["hotkey"]
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert written == []  # (bittensor's import makes empty ~/.bittensor folders; no file appears)


def test_seed_hex_and_missing_coldkey(bao, tmp_path):
    from bittensor_wallet import Keypair

    seed = "0x" + os.urandom(32).hex()
    bao.put("natix/seeded", {"seed": seed})
    w = wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/seeded"))
    assert w.hotkey.ss58_address == Keypair.create_from_seed(seed[2:]).ss58_address
    assert w.coldkeypub.ss58_address == w.hotkey.ss58_address  # local mode, no coldkey given


def test_coldkey_from_public_wallet_file(bao, tmp_path, miner_wallet):
    from bittensor_wallet import Keypair

    bao.put("natix/no-cold", {"mnemonic": Keypair.generate_mnemonic(12)})
    root = os.path.dirname(os.path.dirname(os.path.dirname(miner_wallet.hotkey_file.path)))
    cfg = MinerConfig.model_validate({"wallet": {"path": root, "name": miner_wallet.name},
                                      "vault": {"addr": bao.addr, "token": bao.root_token, "path": "natix/no-cold"}})
    w = wallet_from_vault(cfg)
    assert w.coldkeypub.ss58_address == miner_wallet.coldkeypub.ss58_address


def test_approle_auth_and_its_policy(bao, hotkey_secret, tmp_path):
    role_id, secret_id = bao.approle("natix-miner", ["secret/data/natix/miner-hotkey"])
    cfg = _cfg(tmp_path, addr=bao.addr, role_id=role_id, secret_id=secret_id, path="natix/miner-hotkey")
    assert wallet_from_vault(cfg).hotkey.ss58_address == hotkey_secret["hotkey"]
    bao.put("natix/other", {"mnemonic": hotkey_secret["mnemonic"]})
    other = _cfg(tmp_path, addr=bao.addr, role_id=role_id, secret_id=secret_id, path="natix/other")
    with pytest.raises(VaultAuthError, match="lacks a policy with read on secret/data/natix/other"):
        wallet_from_vault(other)
    bad = _cfg(tmp_path, addr=bao.addr, role_id=role_id, secret_id="not-the-secret-id", path="natix/miner-hotkey")
    with pytest.raises(VaultAuthError, match="AppRole login .* failed"):
        wallet_from_vault(bad)


def test_wrong_token(bao, tmp_path):
    token = "s.ThisTokenIsWrongAndLongEnough123"
    with pytest.raises(VaultAuthError, match="rejected the token") as ei:
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=token, path="natix/miner-hotkey"))
    assert token not in str(ei.value)


def test_missing_path_and_mount(bao, tmp_path):
    with pytest.raises(VaultSecretMissing, match="no secret at secret/natix/nothing-here"):
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/nothing-here"))
    with pytest.raises(VaultSecretMissing, match="KV v2 mount 'nomount'"):
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/miner-hotkey",
                               mount="nomount"))


def test_bad_secret_contents_never_echo_the_value(bao, tmp_path):
    bao.put("natix/empty", {"note": "nothing useful"})
    with pytest.raises(VaultSecretInvalid, match="neither 'mnemonic' nor 'seed'"):
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/empty"))
    phrase = "zebra " * 11 + "notaword"
    bao.put("natix/garbage", {"mnemonic": phrase})
    with pytest.raises(VaultSecretInvalid, match="not a valid BIP39 phrase") as ei:
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/garbage"))
    assert "zebra" not in str(ei.value)
    bao.put("natix/short-seed", {"seed": "0x1234"})
    with pytest.raises(VaultSecretInvalid, match="32 bytes of hex"):
        wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/short-seed"))


def test_unreachable(tmp_path):
    addr = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VaultUnreachable, match="unreachable"):
        wallet_from_vault(_cfg(tmp_path, addr=addr, token="s.whatever-token-value-123456", path="natix/x"))
    assert vault_health(_cfg(tmp_path, addr=addr).vault)["ok"] is False


def test_not_configured(tmp_path):
    with pytest.raises(VaultNotConfigured, match="VAULT_ADDR"):
        wallet_from_vault(_cfg(tmp_path, path="natix/x"))
    with pytest.raises(VaultNotConfigured, match="VAULT_TOKEN"):
        wallet_from_vault(_cfg(tmp_path, addr="http://127.0.0.1:1", path="natix/x"))


def test_sealed_server_is_reported(tmp_path):
    own = start_bao("seal-me-root")  # its own server: sealing is for good
    try:
        own.put("natix/miner-hotkey", {"seed": "11" * 32})
        cfg = _cfg(tmp_path, addr=own.addr, token=own.root_token, path="natix/miner-hotkey")
        assert vault_health(cfg.vault) == {"ok": True, "detail": "active"}
        out = own.cli("operator", "seal")
        assert out.returncode == 0, out.stderr
        with pytest.raises(VaultSealed, match="sealed"):
            wallet_from_vault(cfg)
        role = _cfg(tmp_path, addr=own.addr, role_id="r", secret_id="s", path="natix/miner-hotkey")
        with pytest.raises(VaultSealed):
            wallet_from_vault(role)
        assert vault_health(cfg.vault) == {"ok": False, "detail": "sealed"}
    finally:
        own.stop()


def test_axon_serves_with_the_vault_wallet(bao, hotkey_secret, tmp_path):
    import bittensor as bt

    w = wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/miner-hotkey"))
    axon = bt.Axon(wallet=w, ip="127.0.0.1", port=free_port(), external_ip="127.0.0.1")
    info = axon.info()
    assert info.hotkey == hotkey_secret["hotkey"] and info.coldkey == hotkey_secret["coldkey"]
    from bittensor.utils import unlock_key

    assert unlock_key(w, "hotkey").success and not unlock_key(w, "coldkey").success


def test_card_command_reads_the_hotkey_from_vault(bao, hotkey_secret, tmp_path, monkeypatch):
    from natix_miner.cli import main

    prof = write_profile(tmp_path / "p.yaml", [("a", "timm", {})], [("t", ["a"], 1.0)])
    monkeypatch.setenv("VAULT_ADDR", bao.addr)
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    out = tmp_path / "card" / "model_card.json"
    rc = main(["card", "--profile", prof, "--vault.path", "natix/miner-hotkey", "--model-name", "acme-cascade",
               "--model-version", "1.0.0", "--description", "d", "--output", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["submitted_by"] == hotkey_secret["hotkey"]


def test_secret_values_are_registered_for_redaction(bao, hotkey_secret, tmp_path):
    from natix_miner.ops.logs import redact

    wallet_from_vault(_cfg(tmp_path, addr=bao.addr, token=bao.root_token, path="natix/miner-hotkey"))
    line = f"oops {hotkey_secret['mnemonic']} and {bao.root_token} leaked"
    assert redact(line) == "oops *** and *** leaked"
    assert secrets.HOTKEY_FIELDS == ("mnemonic", "seed")
