"""``natix-miner card`` and ``natix-miner register``: model card and NATIX registration for the
configured hotkey (wallet files, or Vault with ``--vault.path`` / ``VAULT_*``).

    natix-miner card --model-name acme-roadwork --description "cascade" --model-version 1.0.0 \\
        --wallet.name miner --wallet.hotkey default --output model_card.json
    natix-miner register --model-repo acme/roadwork --wallet.name miner --wallet.hotkey default  # UID from chain
    natix-miner register --uid 42 --model-repo acme/roadwork --wallet.name miner --wallet.hotkey default
    natix-miner register --uid 42 --model-repo acme/roadwork --vault.path natix/miner-hotkey \\
        --base-url https://hydra.natix.network --poll-timeout 300

The base URL defaults to ``NATIX_REGISTRATION_URL`` or https://hydra.natix.network.
Without ``--uid``, ``register`` reads the hotkey's UID from the metagraph of ``--netuid`` on
``--subtensor.network`` / ``--subtensor.chain_endpoint`` (the same flags and variables as ``run``).
Exit codes of ``register``: 0 registered, 1 refused/failed (or the UID not found), 2 still pending at the timeout.
"""

import json
import sys

# wallet / vault / profile / chain flags shared with `natix-miner run` (same names, same config keys)
_KEY_PREFIXES = ("profile", "wallet.", "vault.", "chain.")


def _identity_flags(p, chain: bool = False) -> None:
    from natix_miner.miner.args import FLAGS, flag_help

    prefixes = _KEY_PREFIXES[1:] if chain else _KEY_PREFIXES[1:3]
    for flag, key, typ, help_ in FLAGS:
        if key == "profile" or key.startswith(prefixes):
            p.add_argument(flag, dest=key, type=typ, default=None, help=flag_help(key, help_))


def _config(args):
    import argparse
    import os

    from natix_miner.miner.args import build_config

    ns = argparse.Namespace(**{k: v for k, v in vars(args).items()
                               if v is not None and (k == "profile" or k.startswith(_KEY_PREFIXES[1:]))})
    return build_config(namespace=ns, env=os.environ, serving=False)


def _find_uid(args, hotkey: str) -> int:
    """This hotkey's UID from the chain's metagraph (raises StartupError naming the fix)."""
    from natix_miner.miner import errors, neuron

    cfg = _config(args)
    subtensor = neuron.connect_chain(cfg)
    try:
        mg = subtensor.metagraph(cfg.chain.netuid)
    except Exception as exc:  # noqa: BLE001 - one line naming the endpoint
        raise errors.StartupError(errors.CHAIN, f"cannot read the metagraph of netuid {cfg.chain.netuid} from "
                                                f"{neuron.chain_endpoint(cfg)}: {type(exc).__name__}: {exc}") from None
    uid = neuron.find_uid(mg, hotkey)
    if uid is None:
        raise errors.StartupError(errors.REGISTRATION, f"hotkey {hotkey} is not registered on netuid "
                                                       f"{cfg.chain.netuid}; register it with `btcli subnet "
                                                       f"register --netuid {cfg.chain.netuid}` first, or pass --uid")
    print(f"hotkey {hotkey} is uid {uid} on netuid {cfg.chain.netuid} ({neuron.chain_endpoint(cfg)})",
          file=sys.stderr)
    return uid


def _hotkey(args):
    """The configured wallet (files or Vault), built exactly as the miner builds it."""
    from natix_miner.miner.wallet import load_wallet

    return load_wallet(_config(args))


def add_parser(sub) -> None:
    c = sub.add_parser("card", help="write model_card.json (spec section 4) for the configured hotkey")
    c.add_argument("--model-name", required=True, help="unique model name")
    c.add_argument("--description", default="", help="one-line description")
    c.add_argument("--model-version", required=True, help="X.Y.Z")
    c.add_argument("--output", default="model_card.json", help="where to write (default: ./model_card.json)")
    _identity_flags(c)
    c.set_defaults(func=card_main)

    r = sub.add_parser("register", help="register the hotkey and model repository with NATIX, then poll status")
    r.add_argument("--uid", type=int, default=None,
                   help="the miner's uid on the subnet (default: looked up on chain from the hotkey)")
    r.add_argument("--model-repo", required=True, help="Hugging Face model repository, e.g. acme/roadwork")
    r.add_argument("--base-url", default=None, help="NATIX API base (default: NATIX_REGISTRATION_URL or "
                                                    "https://hydra.natix.network)")
    r.add_argument("--poll-interval", type=float, default=3.0, help="seconds between status checks")
    r.add_argument("--poll-timeout", type=float, default=180.0, help="give up polling after this many seconds")
    r.add_argument("--no-poll", action="store_true", help="POST only")
    _identity_flags(r, chain=True)
    r.set_defaults(func=register_main)


def card_main(args) -> int:
    from natix_miner.ops.card import build_card, write_card

    from natix_miner.miner.errors import StartupError

    try:
        wallet = _hotkey(args)
    except (StartupError, ValueError, FileNotFoundError) as exc:  # the same operator mistakes as register
        print(f"error: {exc}", file=sys.stderr)
        return 1
    card = build_card(args.model_name, args.description, args.model_version, wallet.hotkey.ss58_address)
    path = write_card(card, args.output)
    print(json.dumps({"written": path, **card}, indent=2))
    return 0


def register_main(args) -> int:
    from natix_miner import envs
    from natix_miner.ops.registration import (DEFAULT_BASE_URL, RegistrationClient, RegistrationError,
                                              RegistrationTimeout, build_registration)

    from natix_miner.miner.errors import StartupError

    base = args.base_url or envs.get("NATIX_REGISTRATION_URL") or DEFAULT_BASE_URL
    try:
        wallet = _hotkey(args)
        if args.uid is None:
            args.uid = _find_uid(args, wallet.hotkey.ss58_address)
        client = RegistrationClient(base)
        payload = build_registration(wallet.hotkey, args.uid, args.model_repo)
    except (StartupError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"registering uid {args.uid} hotkey {payload['natix_public_key']} model {args.model_repo} at {base}",
          file=sys.stderr)
    try:
        reply = client.register(payload)
        print(json.dumps({"register": reply}), file=sys.stderr)
        if args.no_poll:
            print(json.dumps(reply))
            return 0
        last = {}

        def _show(st):
            nonlocal last
            if st != last:
                print(f"status: {json.dumps(st)}", file=sys.stderr)
                last = st

        final = client.wait(args.uid, interval_s=args.poll_interval, timeout_s=args.poll_timeout, on_update=_show)
    except RegistrationTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RegistrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(final))
    return 0
