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
PYTHON=${PYTHON:-python3}
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

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup done: $(.venv/bin/python --version), $(iptables --version)"
