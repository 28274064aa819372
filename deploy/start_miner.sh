#!/usr/bin/env bash
# Start the miner with the settings in miner.env; pm2 runs this script (see ecosystem.config.js).
#
#   cp miner.env.example miner.env && chmod 600 miner.env && $EDITOR miner.env
#   bash deploy/start_miner.sh                          # foreground, reads miner.env in the repo
#   bash deploy/start_miner.sh --logging.debug          # extra flags go to neurons/miner.py
#   NATIX_ENV_FILE=/etc/natix/miner.env bash deploy/start_miner.sh
#   NATIX_ENV_FILE=my.env bash deploy/start_miner.sh    # relative: from the directory you call it in
#   NATIX_DRY_RUN=1 bash deploy/start_miner.sh          # print the resolved config and the command only
#
# The file is parsed by python-dotenv (natix_miner/envs.py), not sourced: CRLF line ends, quotes,
# `export` prefixes and comments after values all work, and nothing in it is executed. Its variables
# are exported unless already set in the environment; the miner reads NATIX_* / VAULT_* / OTEL_* (and
# the reference miner's WALLET_NAME, MINER_AXON_PORT, ... as aliases). Extra flags: NATIX_EXTRA_ARGS.
set -euo pipefail
caller="$PWD"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ENV_FILE="${NATIX_ENV_FILE:-$PWD/miner.env}"
[[ "$ENV_FILE" == /* ]] || ENV_FILE="$caller/$ENV_FILE"
if [[ ! -f "$ENV_FILE" ]]; then
  echo "start_miner: $ENV_FILE not found; create it: cp miner.env.example miner.env && chmod 600 miner.env" >&2
  exit 2
fi
export NATIX_ENV_FILE="$ENV_FILE"
mode="$(stat -c %a "$ENV_FILE" 2>/dev/null || echo 600)"
if [[ "${mode: -2}" != "00" ]]; then
  echo "start_miner: warning: $ENV_FILE is readable by others (mode $mode); it may hold Vault credentials: chmod 600 $ENV_FILE" >&2
fi

# the interpreter is needed before Python can parse the file: read NATIX_PYTHON with sed (CR, quotes stripped)
file_python="$(sed -n -E 's/^[[:space:]]*(export[[:space:]]+)?NATIX_PYTHON[[:space:]]*=[[:space:]]*//p' "$ENV_FILE" \
  | tail -n 1 | tr -d '\r' | sed -E "s/[[:space:]]+#.*$//; s/^\"(.*)\"$/\\1/; s/^'(.*)'$/\\1/")"
PYTHON="${NATIX_PYTHON:-${file_python:-.venv/bin/python}}"
if [[ ! -x "$PYTHON" ]] && ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "start_miner: python '$PYTHON' not found; run scripts/setup.sh or set NATIX_PYTHON in $ENV_FILE" >&2
  exit 2
fi

exports="$("$PYTHON" -m natix_miner.envs --export "$ENV_FILE")" || exit 2
eval "$exports"

args=()
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
