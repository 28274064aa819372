"""The miner's hotkey: from Vault when configured, else wallet files, else (local mode only) a
throw-away wallet in a temporary directory.

Usage::

    wallet = load_wallet(cfg)         # a bittensor Wallet whose .hotkey signs
"""

import atexit
import logging
import os
import shutil
import tempfile

from natix_miner.config import MinerConfig

log = logging.getLogger("natix_miner.wallet")


def ephemeral_wallet(name: str = "natix-local", hotkey: str = "miner", root: str = None):
    """A fresh unencrypted wallet in a temporary directory (local mode and tests only)."""
    import bittensor as bt

    if root is None:  # removed at exit: runs leave no natix-* folders in the temporary directory
        root = tempfile.mkdtemp(prefix="natix-wallet-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    w = bt.Wallet(name=name, hotkey=hotkey, path=root)
    w.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    w.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return w


def load_wallet(cfg: MinerConfig):
    import bittensor as bt

    if cfg.vault.enabled:
        from natix_miner.ops.secrets import wallet_from_vault

        return wallet_from_vault(cfg)
    w = bt.Wallet(name=cfg.wallet.name, hotkey=cfg.wallet.hotkey, path=cfg.wallet.path)
    hotkey_file = os.path.join(os.path.expanduser(cfg.wallet.path), cfg.wallet.name, "hotkeys", cfg.wallet.hotkey)
    if os.path.exists(hotkey_file):
        return w
    if cfg.local:
        w = ephemeral_wallet()
        log.warning("local mode: wallet %s/%s not found; using a throw-away hotkey %s",
                    cfg.wallet.name, cfg.wallet.hotkey, w.hotkey.ss58_address)
        return w
    raise FileNotFoundError(
        f"hotkey file {hotkey_file} not found: create it with btcli, point --wallet.path at it, "
        f"or configure Vault (--vault.path / VAULT_ADDR / VAULT_TOKEN)")
