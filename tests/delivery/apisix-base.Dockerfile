# CI only: the official apache/apisix:3.18.0-debian image rebuilt from the shared APISIX tarball
# (../shared/peers/apisix: the image's /usr/local/apisix, /usr/local/openresty and /usr/bin/apisix), since
# no image registry is reachable here. BASE_IMAGE is scripts/mk-base.sh's Debian 12, which already has the
# tarball's run-time packages (install.sh's list): the build has no network. test_docker.py builds it from a
# context holding only this file and the tarball. What the official Dockerfile adds is mirrored: the
# openresty/resty links of the apisix-runtime package, PATH, the apisix user (636) owning
# /usr/local/apisix, logs to stdout/stderr, WORKDIR, USER apisix, SIGQUIT.
ARG BASE_IMAGE=local/debian:bookworm-py
FROM ${BASE_IMAGE}
# ADD unpacks a local .tar.xz (root-owned files, the tarball's modes)
ADD apisix-3.18.0-debian12-amd64.tar.xz /
RUN set -eu; \
    ln -sfn /usr/local/openresty/bin/openresty /usr/bin/openresty; \
    ln -sfn /usr/local/openresty/bin/resty /usr/bin/resty; \
    mkdir -p /usr/local/apisix/logs; \
    groupadd --system --gid 636 apisix; \
    useradd --system --gid apisix --no-create-home --shell /usr/sbin/nologin --uid 636 apisix; \
    chown -R apisix:0 /usr/local/apisix; \
    chmod -R g=u /usr/local/apisix; \
    ln -sf /dev/stdout /usr/local/apisix/logs/access.log; \
    ln -sf /dev/stderr /usr/local/apisix/logs/error.log; \
    openresty -V 2>&1 | grep -q apisix-nginx-module; \
    apisix version
WORKDIR /usr/local/apisix
ENV PATH=$PATH:/usr/local/openresty/luajit/bin:/usr/local/openresty/nginx/sbin:/usr/local/openresty/bin
EXPOSE 9080 9443
USER apisix
STOPSIGNAL SIGQUIT
CMD ["sh", "-c", "rm -f logs/worker_events.sock && apisix init && exec openresty -p /usr/local/apisix -g 'daemon off;'"]
