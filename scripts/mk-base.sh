#!/usr/bin/env bash
# Build the CI-only Debian base image from the machine's Debian mirror (no image registry is reachable):
# python3, pip, venv, iptables, iproute2, the machine's extra CA certificates (HTTPS egress is
# re-signed by a proxy) and APISIX's run-time libraries (the list in ../shared/peers/apisix/install.sh:
# tests/delivery/apisix-base.Dockerfile unpacks the shared APISIX tarball on this base and its builds have
# no network), labelled with a hash of this recipe so docker-ci.sh rebuilds only when it changes.
# Usage: scripts/mk-base.sh TAG   (as root; needs docker and mmdebstrap)
set -euo pipefail
TAG=${1:-local/debian:bookworm-py}
SRC=/etc/apt/sources.list.d/debian.sources; [ -f "$SRC" ] || SRC=/etc/apt/sources.list
RECIPE=$(cat "$0" "$SRC" | sha256sum | cut -c1-16)
mmdebstrap --variant=minbase --quiet \
  --include=python3,python3-pip,python3-venv,iptables,iproute2,ca-certificates \
  --include=libstdc++6,libgcc-s1,libcrypt1,libssl3,zlib1g,libpcre2-8-0,libpcre3,libyaml-0-2,libxml2 \
  --include=libxslt1.1,libxmlsec1,libxmlsec1-openssl,libbrotli1,libbrotli-dev \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates >/dev/null; fi' \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED; ln -sf python3 "$1/usr/bin/python"; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm - "$SRC" \
  | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' --change "LABEL ci.base.recipe=$RECIPE" - "$TAG"
