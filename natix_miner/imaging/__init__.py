"""Safe decoding, preprocessing, the validator's augmentations and procedural road scenes."""
