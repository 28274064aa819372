"""Synthesised inputs for the tooling (mock validator, training, soak and fault tests).

* :mod:`~natix_miner.synth.scenes` (+ :mod:`~natix_miner.synth.scene_props`): procedural dashcam
  scenes with true roadwork labels and boxes;
* :mod:`~natix_miner.synth.sources`: challenge streams (procedural, image folders, NATIX parquet);
* :mod:`~natix_miner.synth.augment`: the validator's augmentation levels 0..3;
* :mod:`~natix_miner.synth.hostile`: a catalogue of hostile images for the decoder.

Nothing on the serving path imports this package::

    from natix_miner.synth.scenes import render_scene
    from natix_miner.synth.augment import augment
"""
