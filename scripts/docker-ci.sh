#!/usr/bin/env bash
# The Docker part of CI (as root): install Debian's docker.io, start a private dockerd that leaves the host
# network alone (no bridge, no iptables), build the local base image when its recipe changed, and run
# tests/delivery/test_docker.py (images built under unique tags, the pod pattern, all removed after).
# The daemon's data stays in $AMESH_DOCKER_DIR (outside the repo) so the base image survives between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${AMESH_DOCKER_DIR:-/var/lib/amesh-docker-ci}
BASE=${AMESH_DOCKER_BASE:-local/debian:bookworm-py}
if [ "$(id -u)" != 0 ]; then echo "docker-ci: needs root (dockerd, nsenter)" >&2; exit 1; fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$DIR/data" "$DIR/exec"
export DOCKER_HOST="unix://$DIR/docker.sock"
# A SIGKILLed earlier daemon leaves its pidfile; drop it when no dockerd holds that PID.
if [ -f "$DIR/dockerd.pid" ] && ! grep -qs dockerd "/proc/$(cat "$DIR/dockerd.pid")/comm"; then
    rm -f "$DIR/dockerd.pid"
fi
dockerd --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$DIR/dockerd.pid" -H "$DOCKER_HOST" \
    --bridge=none --iptables=false --ip6tables=false >"$DIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
cleanup() {
    local ids
    ids=$(docker ps -aq --filter label=amesh.test 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.25; done
docker info >/dev/null || { tail -20 "$DIR/dockerd.log" >&2; exit 1; }

SRC=/etc/apt/sources.list.d/debian.sources; [ -f "$SRC" ] || SRC=/etc/apt/sources.list
want=$(cat scripts/mk-base.sh "$SRC" | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{index .Config.Labels "ci.base.recipe"}}' "$BASE" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    echo "docker-ci: building base image $BASE"
    bash scripts/mk-base.sh "$BASE"
fi

export AMESH_DOCKER_BASE="$BASE"
.venv/bin/python -m pytest tests/delivery/test_docker.py -q -p no:cacheprovider "$@"
