#!/usr/bin/env bash
# Install what the project and its tests need on Debian (run as root): system packages, a venv in .venv,
# the project in editable mode with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# iptables (both backends) and iproute2 for the capture program and the netns tests; nginx with the Lua
# module, nghttp and wrk for the data-path tests of the original-destination Lua module; openssl for TLS tests.
APT_PACKAGES=(iptables iproute2 util-linux procps ca-certificates openssl
              nginx-light libnginx-mod-http-lua lua-resty-core libnginx-mod-stream nghttp2-client wrk)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Debian's own Python by default: the local mesh (amesh-mesh) runs the sidecar agent as UID 1337, which must
# be able to read the interpreter (a Python under /root, e.g. pyenv's, is not readable by other users).
PYTHON=${PYTHON:-/usr/bin/python3}
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    missing+=(python3 python3-venv python3-dev)
    PYTHON=/usr/bin/python3
fi
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian starts services on install; the tests run their own nginx, so keep the stock one from starting.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.amesh
    if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.amesh /usr/sbin/policy-rc.d; own_policy=1; fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "${own_policy:-}" ] || rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.amesh
fi

# a .venv made from another interpreter is made again from this one
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import os, sys; print(os.path.realpath(sys._base_executable))')" != "$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')" ]; then
    rm -rf .venv
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# Exact versions from constraints.txt (one list for CI, developers and the images; 'make constraints' refreshes it).
.venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
# The real peers of the local mesh and its tests: APISIX 3.18 (into /usr/local/apisix, as the official image
# lays it out) and istiod (unpacked on first use by amesh-mesh), from ../shared/peers beside the project.
PEERS=../shared/peers
if [ ! -f /usr/local/apisix/apisix/cli/apisix.lua ] && [ -f "$PEERS/apisix/install.sh" ]; then
    sh "$PEERS/apisix/install.sh" >/dev/null
fi
echo "setup done: $(.venv/bin/python --version), $(iptables --version)," \
     "APISIX $( [ -f /usr/local/apisix/apisix/cli/apisix.lua ] && echo installed || echo 'missing (no ../shared/peers/apisix)')"
