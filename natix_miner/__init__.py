"""natix-miner: a production miner for NATIX StreetVision (Bittensor subnet 72).

Nothing heavy happens at import: torch, bittensor and model code load only when used.
"""

__version__ = "0.1.0"
