#!/usr/bin/env bash
# A Docker engine for the container test (tests/ops/test_docker.py): installs Debian's docker.io and
# debootstrap (apt), starts dockerd when none answers, and makes the local base image the test
# builds on (no image registry is needed: debootstrap from the configured Debian mirror, then
# `docker import`). Idempotent; .ci/run calls it before the two quick-start commands.
#
#   sudo bash scripts/docker_setup.sh              # everything
#   sudo bash scripts/docker_setup.sh --base-only  # only the base image (engine already running)
#
# NATIX_DOCKER_BASE names the base image (default local/debian:bookworm). Exit 0 when the engine
# answers and the base image exists; otherwise 1 with the reason (the docker test then skips when no
# engine answers, and says why).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${NATIX_DOCKER_BASE:-local/debian:bookworm}"
SUITE="${NATIX_DOCKER_SUITE:-bookworm}"
BASE_ONLY=0
[ "${1:-}" = "--base-only" ] && BASE_ONLY=1
log() { echo "docker_setup: $*" >&2; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    log "error: needs root (or password-less sudo) to install and start Docker"
    exit 1
  fi
fi

engine_up() { "${SUDO[@]}" docker info >/dev/null 2>&1; }

if [ "$BASE_ONLY" = 0 ]; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; then
    log "installing docker.io and debootstrap (apt)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get install -y -q docker.io debootstrap >/dev/null \
      || { "${SUDO[@]}" apt-get update -q >/dev/null && "${SUDO[@]}" apt-get install -y -q docker.io debootstrap >/dev/null; }
  fi
  if ! engine_up; then
    log "starting dockerd (log: /var/log/natix-dockerd.log)"
    "${SUDO[@]}" sh -c 'nohup dockerd >/var/log/natix-dockerd.log 2>&1 &'
    for _ in $(seq 60); do engine_up && break; sleep 1; done
  fi
fi
if ! engine_up; then
  log "error: no Docker engine answers (see /var/log/natix-dockerd.log)"
  exit 1
fi

if "${SUDO[@]}" docker image inspect "$BASE" >/dev/null 2>&1; then
  log "engine up; base image $BASE present"
  exit 0
fi
# the Debian mirror apt uses here (deb822 URIs: or one-line deb entries), else the public one
MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -vE '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?' | grep -v -- '-security' | head -n1 || true)"
MIRROR="${NATIX_DEBIAN_MIRROR:-${MIRROR:-http://deb.debian.org/debian}}"
ROOTFS="$(mktemp -d /tmp/natix-rootfs.XXXXXX)"
trap '"${SUDO[@]}" rm -rf "$ROOTFS"' EXIT
log "building $BASE: debootstrap --variant=minbase $SUITE from $MIRROR"
t0=$(date +%s)
"${SUDO[@]}" debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >/tmp/natix-debootstrap.log 2>&1 \
  || { log "error: debootstrap failed (log: /tmp/natix-debootstrap.log)"; exit 1; }
"${SUDO[@]}" tar -C "$ROOTFS" --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' -c . \
  | "${SUDO[@]}" docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE" >/dev/null
log "engine up; base image $BASE built in $(( $(date +%s) - t0 )) s"
