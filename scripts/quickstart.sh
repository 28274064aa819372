#!/usr/bin/env bash
# Quick start: install, then run the miner's main job on its embedded default profile in local
# mode (no chain, no downloads): a local miner answers a mock validator that replays the live
# validator's challenge pipeline, and the validator's report is printed at the end.
#
#   bash scripts/quickstart.sh [extra mock_validator flags, e.g. --n 100]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0
exec .venv/bin/python scripts/mock_validator.py --spawn-miner --n "${NATIX_QUICKSTART_N:-40}" "$@"
