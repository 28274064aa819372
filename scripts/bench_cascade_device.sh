#!/usr/bin/env bash
# Issue 14 part 2 on a lent H200 machine: the production cascade measured (docs/benchmarks.md,
# "Production cascade (issue 14 part 2): ready to run"). The device image has torch, torchvision,
# transformers, timm and onnxruntime but no registry and no ultralytics / rfdetr / pydantic / rapidocr.
#
# Here (PyPI reachable), once, in the repo root:
#   bash scripts/bench_cascade_device.sh wheels        # -> .whl/ (about 40 MB, lock versions); ignored by git
# There (repo root; the run names .whl in carry), one call:
#   bash scripts/bench_cascade_device.sh measure h100x2 $OUT/h100x2.json [more bench_cascade.py flags]
# builds the full-scale stand-ins into .si/h100x2 (ignored by git) unless a warm machine still has them
# from an earlier call, then measures; `build` alone only builds (for a machine that stays warm).
set -euo pipefail
cd "$(dirname "$0")/.."

# packages the device image lacks (its list: .library/device/KINDS.md), and transformers / timm at the
# lock's versions (the image has older ones; the stand-in architectures are tested with these)
WHEELS="pydantic pydantic_core annotated-types typing-inspection typing_extensions ultralytics ultralytics-thop
rfdetr supervision pyDeprecate rapidocr-onnxruntime pyclipper shapely defusedxml transformers timm"

locked() {  # NAME==VERSION as requirements.lock pins it (names compared case- and -/_-insensitively)
  local want
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  while IFS= read -r line; do
    name=${line%%==*}
    if [ "$(echo "$name" | tr 'A-Z_' 'a-z-')" = "$want" ]; then echo "$line"; return 0; fi
  done < <(grep '==' requirements.lock)
  echo "error: $1 is not pinned in requirements.lock" >&2
  return 1
}

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.si/' .git/info/exclude 2>/dev/null || echo '/.si/' >> .git/info/exclude
    mkdir -p .whl
    pins=()
    for w in $WHEELS; do pins+=("$(locked "$w")"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "${pins[@]}"
    du -sh .whl
    ;;
  build|measure)
    profile=${2:?usage: $0 $1 PROFILE ...}
    [ -d .whl ] || { echo "error: no .whl here: run 'bash scripts/bench_cascade_device.sh wheels' where PyPI is reachable and carry .whl" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
    mkdir -p .si
    if [ "$1" = build ]; then
      out=${3:-${OUT:-/tmp}/$profile-build.json}
      exec timeout 590 python3 scripts/bench_cascade.py --profile "$profile" --stand-ins ".si/$profile" \
        --build-stand-ins --scale full --build-only --out "$out"
    fi
    out=${3:?usage: $0 measure PROFILE OUT.json [flags]}
    shift 3
    # build (or reuse) the stand-ins, load, measure; no new step after 8 minutes (build and load
    # counted), and the 10-minute call limit still returns the JSON under $OUT
    exec timeout 590 python3 scripts/bench_cascade.py --profile "$profile" --stand-ins ".si/$profile" \
      --build-stand-ins --scale full --vlm-backend hf --time-limit 480 --out "$out" "$@"
    ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
