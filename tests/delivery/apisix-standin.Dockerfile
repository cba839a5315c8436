# CI only: a stand-in for APISIX's official image, which no reachable registry serves here. It has the
# layout Dockerfile.sidecar relies on (/usr/local/apisix, `apisix` on PATH, Debian), not APISIX itself.
ARG BASE_IMAGE=local/debian:bookworm-py
FROM ${BASE_IMAGE}
RUN mkdir -p /usr/local/apisix/conf /usr/local/apisix/logs \
 && printf '#!/bin/sh\necho "apisix stand-in (no APISIX in this CI image): $*" >&2\nexit 1\n' >/usr/local/bin/apisix \
 && chmod 0755 /usr/local/bin/apisix
