"""Subcommands of ``natix-miner`` that belong to no single room (run, predict, profile, bench)."""
