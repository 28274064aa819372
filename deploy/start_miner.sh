#!/usr/bin/env bash
# Start the miner with the settings in miner.env; pm2 runs this script (see ecosystem.config.js).
#
#   cp miner.env.example miner.env && chmod 600 miner.env && $EDITOR miner.env
#   bash deploy/start_miner.sh                          # foreground, reads ./miner.env
#   bash deploy/start_miner.sh --logging.debug          # extra flags go to neurons/miner.py
#   NATIX_ENV_FILE=/etc/natix/miner.env bash deploy/start_miner.sh
#   NATIX_DRY_RUN=1 bash deploy/start_miner.sh          # print the resolved config and the command only
#
# Every variable in miner.env is exported; the miner reads NATIX_* / VAULT_* / OTEL_* itself
# (natix_miner/envs.py lists them). Flags without a variable go in NATIX_EXTRA_ARGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENV_FILE="${NATIX_ENV_FILE:-miner.env}"
if [[ ! -f "$ENV_FILE" ]]; then
  echo "start_miner: $ENV_FILE not found; create it: cp miner.env.example miner.env && chmod 600 miner.env" >&2
  exit 2
fi
mode="$(stat -c %a "$ENV_FILE" 2>/dev/null || echo 600)"
if [[ "${mode: -2}" != "00" ]]; then
  echo "start_miner: warning: $ENV_FILE is readable by others (mode $mode); it may hold Vault credentials: chmod 600 $ENV_FILE" >&2
fi

set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a

PYTHON="${NATIX_PYTHON:-.venv/bin/python}"
if [[ ! -x "$PYTHON" ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "start_miner: python '$PYTHON' not found; run scripts/setup.sh or set NATIX_PYTHON in $ENV_FILE" >&2
  exit 2
fi

args=()
case "${NATIX_LOCAL:-0}" in 1|true|yes) args+=(--local) ;; esac
if [[ -n "${NATIX_EXTRA_ARGS:-}" ]]; then
  read -r -a extra <<< "$NATIX_EXTRA_ARGS"
  args+=("${extra[@]}")
fi
args+=("$@")

if [[ -n "${NATIX_DRY_RUN:-}" ]]; then
  "$PYTHON" -m natix_miner.ops.showconfig "${args[@]}"
  printf 'command:'; printf ' %q' "$PYTHON" neurons/miner.py "${args[@]}"; printf '\n'
  exit 0
fi
exec "$PYTHON" neurons/miner.py "${args[@]}"
