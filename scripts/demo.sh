#!/usr/bin/env bash
# The main job: a local Istio mesh on this host — istiod 1.29 and the Bookinfo pods (network namespaces), each
# captured by amesh-iptables with the injector's default arguments and served by amesh-agent + a real APISIX —
# running Istio's Bookinfo traffic-management tasks, printed as a table (what was sent, which version answered,
# what Istio specifies). Needs root; the mesh is taken down at the end (keep it: amesh-mesh demo --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/amesh-mesh demo --workdir "${AMESH_MESH_WORKDIR:-/tmp/amesh-mesh-demo}" "$@"
