"""The serving path's image handling: safe decoding, the JPEG fast path, preprocessing.

Procedural scenes, challenge sources, the validator's augmentations and hostile test images are
tooling inputs and live in :mod:`natix_miner.synth`.
"""
