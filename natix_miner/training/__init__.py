"""Training, calibration and evaluation that optimise the validator's reward.

Reached through ``natix-miner`` subcommands (see ``docs/training.md``)::

    natix-miner data pull --out data/roadwork            # NATIX dataset from Hugging Face (HF_TOKEN)
    natix-miner data validate data/roadwork              # corrupt files, near-duplicates, balance
    natix-miner train --data data/roadwork --arch convnext_tiny --out runs/cnx
    natix-miner calibrate --profile demo-cpu --data data/roadwork
    natix-miner evaluate --profile demo-cpu --data procedural --n 400 --json eval.json
    natix-miner hard-examples --profile demo-cpu --data data/unlabelled --out hard/
    natix-miner distill --profile h100x2 --data data/unlabelled --out data/distilled

Modules (each imports torch / sklearn / matplotlib inside functions only):

* :mod:`.datasets`   - labelled samples from folders, CSV, parquet, procedural scenes; COCO boxes
* :mod:`.hub`        - ``data pull``: the NATIX parquet dataset, downloaded or ingested locally
* :mod:`.validate`   - ``data validate``: what is wrong with a dataset
* :mod:`.metrics`    - MCC, accuracy, the reward proxy, thresholds, reliability
* :mod:`.calibrate`  - temperature / isotonic calibration, consensus weights by logistic regression
* :mod:`.runner`     - a profile's experts over many images (all experts, or the cascade)
* :mod:`.trainer`    - classifier fine-tuning with the validator's augmentation, checkpoints, resume
* :mod:`.detector`   - ultralytics detector fine-tuning on COCO roadwork boxes
* :mod:`.evaluate`   - ``evaluate``: per level / per source tables, plots, profile comparison
* :mod:`.hard`       - hard-example mining and export
* :mod:`.distill`    - label unlabelled images with the heavy tiers, train a fast expert on them
"""
