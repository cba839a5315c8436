"""The data-path part of APISIX's `conf/config.yaml` (pure; merged into apisix/config.py's render()).

The chosen outbound split (docs/data-path.md, design (a)): both capture ports are *stream* listeners;
the Lua hook makes the stream router see the original destination as server_addr/server_port. TCP
services are stream routes by original address and port; HTTP service ports are stream routes to
internal HTTP listeners on 127.0.0.1, one per (direction, port), where the translated HTTP routes run
(the listener stands for the original port: plugin_attr.amesh.http_ports tells the hook which).
A new HTTP port therefore changes this fragment (an APISIX reload); new routes do not.

Upstream connections must leave from the UID/GID the capture rules exempt (nginx user), and inbound
ones, like Istio's, from 127.0.0.6 / ::6 (`proxy_bind` chosen per internal listener by a map).

Request mirroring (Envoy `request_mirror_policies`): APISIX's proxy-mirror sends its copy from the
exempt UID, so a copy addressed to a service would be neither captured nor resolved. It goes to a
fixed loopback listener instead (`mirror_port`, direction "mirror" for the hook), where one internal
route per mirrored cluster (translate/route.py `mirror_route`) proxies it to that cluster's upstream.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

LUA_DIR = Path(__file__).resolve().parents[1] / "lua"  # package data: amesh/origdst.lua, amesh/hook.lua
HOOK = "amesh.hook"  # lua_module_hook names must match ^[a-zA-Z._-]+$ (no digits)
INBOUND_SOURCE_V4, INBOUND_SOURCE_V6 = "127.0.0.6", "::6"
PASSTHROUGH_PLUGIN = "amesh-passthrough"  # lua/apisix/plugins/amesh-passthrough.lua
RBAC_PLUGIN = "amesh-rbac"  # lua/apisix/plugins/amesh-rbac.lua (translate/rbac.py: AuthorizationPolicy)
# config.yaml's `plugins` replaces APISIX's default list: the plugins whose schemas the agent ships
# and validates with (schemas/apisix-3.18/plugins, checked by a test), and the passthrough plugin.
HTTP_PLUGINS = ("api-breaker", "cors", "ext-plugin-post-req", "ext-plugin-pre-req", "fault-injection",
                "grpc-transcode", "ip-restriction", "jwt-auth", "key-auth", "limit-conn", "limit-count",
                "limit-req", "mocking", "prometheus", "proxy-control", "proxy-mirror", "proxy-rewrite",
                "real-ip", "redirect", "request-id", "response-rewrite", "serverless-pre-function",
                "traffic-split")
STREAM_PLUGINS = ("ip-restriction", "limit-conn")  # of APISIX's default stream plugins, those with schemas here


class Direction(enum.Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"
    INBOUND_TLS = "inbound-tls"  # a stream listener terminating the pod's inbound mTLS for one port


MIRROR_DIRECTION = "mirror"  # amesh_direction on the mirror listener (plugin_attr.amesh.http_ports)
DEFAULT_MIRROR_PORT = 15099  # internal_base - 1 with the default internal_base
DEFAULT_TCP_MTLS_PORT = 15098  # internal_base - 2: the TLS origin server of Istio mTLS TCP upstreams
HOP_DICT = "amesh-hop-stream"  # lua/amesh/mtls_origin.lua: diverted connections by loopback source address
INTERNAL_SPAN = 1500  # internal listener ports from internal_base: 500 outbound, 500 inbound, 500 inbound TLS
TLS_PLUGIN = "amesh-mtls"  # lua/apisix/plugins/amesh-mtls.lua: TLS or plaintext on an inbound port


@dataclass(frozen=True)
class DataPathSettings:
    outbound_port: int = 15001
    inbound_port: int = 15006
    ipv6: bool = False  # the pod has a non-link-local IPv6 address: listen on [::] too
    proxy_user: str = "istio-proxy"  # name of the exempt UID (1337) in the image
    proxy_group: str = "istio-proxy"  # name of the exempt GID (1337)
    outbound_http_ports: tuple[int, ...] = ()  # service ports istiod serves as HTTP (0.0.0.0_<port> HCM)
    inbound_http_ports: tuple[int, ...] = ()  # the pod's own declared HTTP ports (virtualInbound chains)
    # the pod's ports with mTLS chains (PeerAuthentication STRICT / PERMISSIVE), served only with a
    # workload certificate (mtls_dir): a TLS listener each, where the stream front sends TLS connections
    inbound_tls_ports: tuple[int, ...] = ()
    internal_base: int = 15100  # internal listeners: outbound from here, inbound from +500, inbound TLS from +1000
    # loopback listener receiving proxy-mirror's copies (translated mirrors point there: the
    # Translator takes it from the settings it is given)
    mirror_port: int = DEFAULT_MIRROR_PORT
    # with a workload certificate: our own stream server on 127.0.0.1 that dials Istio mTLS TCP upstreams
    # and verifies them (lua/amesh/mtls_origin.lua), which APISIX's stream servers cannot
    tcp_mtls_port: int = DEFAULT_TCP_MTLS_PORT
    lua_dir: str = field(default=str(LUA_DIR))
    # the workload certificate's directory (cert-chain.pem, key.pem, root-cert.pem; the agent keeps it
    # current): upstreams labelled `amesh.tls: istio-mutual` present it and verify the server's
    # identity (lua/amesh/mtls.lua). None: no workload certificate (no CA configured).
    mtls_dir: str | None = None
    # (direction, original port, internal port) kept from the previous settings (settings_for): a port
    # already served keeps its listener when others come and go, so nothing is misrouted while a new
    # config.yaml and the document that needs it are applied one after the other.
    pinned: tuple[tuple[Direction, int, int], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        for name in ("outbound_port", "inbound_port", "internal_base", "mirror_port", "tcp_mtls_port"):
            if not 1 <= getattr(self, name) <= 65535:
                problems.append(f"{name} {getattr(self, name)} is not a port number (1-65535)")
        if self.outbound_port == self.inbound_port:
            problems.append("outbound_port and inbound_port must differ")
        for name in ("outbound_http_ports", "inbound_http_ports", "inbound_tls_ports"):
            ports = getattr(self, name)
            bad = [p for p in ports if not isinstance(p, int) or not 1 <= p <= 65535]
            if bad:
                problems.append(f"{name}: {bad} are not port numbers")
            if len(set(ports)) != len(ports):
                problems.append(f"{name}: duplicate ports")
            if len(ports) > 500:
                problems.append(f"{name}: {len(ports)} ports, at most 500 fit the internal range")
        if self.internal_base + INTERNAL_SPAN > 65536:
            problems.append(f"internal_base {self.internal_base} leaves no room for {INTERNAL_SPAN} internal ports")
        if self.inbound_tls_ports and not self.mtls_dir:
            problems.append("inbound_tls_ports need a workload certificate (mtls_dir)")
        if problems:
            raise ValueError("invalid data-path settings: " + "; ".join(problems))
        internal = [p for _, _, p in self.pinned]
        if len(set(internal)) != len(internal) or len({(d, p) for d, p, _ in self.pinned}) != len(internal):
            raise ValueError("invalid data-path settings: pinned internal ports repeat")
        taken = {self.outbound_port, self.inbound_port}
        clash = sorted(taken & set(range(self.internal_base, self.internal_base + INTERNAL_SPAN)))
        if clash:
            raise ValueError(f"invalid data-path settings: capture ports {clash} inside the internal range")
        # the TLS origin server exists only with a workload certificate
        for name in ("mirror_port", "tcp_mtls_port") if self.mtls_dir else ("mirror_port",):
            port = getattr(self, name)
            if port in taken:
                raise ValueError(f"invalid data-path settings: {name} {port} is a capture port")
            if self.internal_base <= port < self.internal_base + INTERNAL_SPAN:
                raise ValueError(f"invalid data-path settings: {name} {port} inside the internal range "
                                 f"{self.internal_base}-{self.internal_base + INTERNAL_SPAN - 1}")
        if self.mtls_dir and self.tcp_mtls_port == self.mirror_port:
            raise ValueError("invalid data-path settings: tcp_mtls_port and mirror_port must differ")


def internal_ports(settings: DataPathSettings) -> dict[tuple[Direction, int], int]:
    """(direction, original port) -> the internal HTTP listener port on 127.0.0.1.

    Pinned ports keep theirs; the others take the lowest free ones in port order (without pins:
    dense and sorted, from internal_base outbound and internal_base + 500 inbound)."""
    out = {}
    for direction, ports, base in ((Direction.OUTBOUND, settings.outbound_http_ports, settings.internal_base),
                                   (Direction.INBOUND, settings.inbound_http_ports, settings.internal_base + 500),
                                   (Direction.INBOUND_TLS, settings.inbound_tls_ports, settings.internal_base + 1000)):
        wanted = set(ports)
        kept = {port: internal for d, port, internal in settings.pinned
                if d is direction and port in wanted and base <= internal < base + 500}
        used = set(kept.values())
        free = (p for p in range(base, base + 500) if p not in used)
        for port in sorted(wanted):
            out[(direction, port)] = kept[port] if port in kept else next(free)
    return out


def settings_for(listeners: Mapping[str, Any], pod_ips: Sequence[str] = (), *,
                 base: DataPathSettings | None = None,
                 previous: DataPathSettings | None = None) -> DataPathSettings:
    """The data-path settings for the held LDS listeners (by name) and the pod's addresses
    (INSTANCE_IPS): what the agent renders config.yaml from, and what the Translator uses.

    `base` gives the rest (ports, user, lua_dir); `previous` (the settings in force) pins the internal
    ports of HTTP ports still served. Inbound HTTP ports need the pod's addresses (without them the
    inbound side is not translated). `ipv6` follows the pod's addresses when they are known."""
    from sidecar_agent.translate import inbound, stream  # translate imports this module

    virtual_inbound = listeners.get("virtualInbound")
    inbound_ports = tls_ports = ()
    if virtual_inbound is not None and pod_ips:
        inbound_ports, tls_ports = inbound.served_ports(virtual_inbound)
    return with_ports(base or DataPathSettings(), stream.http_ports(listeners), inbound_ports, pod_ips, previous,
                      tls_ports)


def with_ports(base: DataPathSettings, outbound_http_ports: Sequence[int], inbound_http_ports: Sequence[int],
               pod_ips: Sequence[str] = (), previous: DataPathSettings | None = None,
               inbound_tls_ports: Sequence[int] = ()) -> DataPathSettings:
    """`base` serving these HTTP ports (and, with a workload certificate, terminating mTLS on
    `inbound_tls_ports`), internal ports pinned from `previous`; ipv6 from `pod_ips`.

    The pins are `previous`'s assignment plus its older pins whose internal port is still free: a
    port that goes and comes back (a rolled-back update) gets its listener back."""
    pinned = base.pinned
    if previous is not None:
        current = internal_ports(previous)
        taken = set(current.values())
        pins = {(d, port): internal for d, port, internal in previous.pinned
                if (d, port) not in current and internal not in taken}
        pins.update(current)
        pinned = tuple(sorted(((d, port, internal) for (d, port), internal in pins.items()),
                              key=lambda t: (t[0].value, t[1])))
    ipv6 = base.ipv6
    if pod_ips:
        ipv6 = any(_global_v6(ip) for ip in pod_ips)
    return dataclasses.replace(base, ipv6=ipv6, outbound_http_ports=tuple(sorted(set(outbound_http_ports))),
                               inbound_http_ports=tuple(sorted(set(inbound_http_ports))),
                               inbound_tls_ports=tuple(sorted(set(inbound_tls_ports))) if base.mtls_dir else (),
                               pinned=pinned)


def needs_reload(old: DataPathSettings | None, new: DataPathSettings) -> bool:
    """Does going from `old` to `new` change conf/config.yaml (regenerate it and reload APISIX)?"""
    return old is None or fragment(old) != fragment(new)


def _global_v6(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"pod address {ip!r} is not an IP address") from None
    return address.version == 6 and not address.is_link_local


def _listen(port: int, ipv6: bool, *, host: str | None = None) -> list[str]:
    if host:
        return [f"{host}:{port}"]
    return [f"0.0.0.0:{port}"] + ([f"[::]:{port}"] if ipv6 else [])


def fragment(settings: DataPathSettings) -> dict[str, Any]:
    """The config.yaml keys the data path owns; deep-merge into the rest of the generated file."""
    s = settings
    everything = internal_ports(s)
    ports = {k: p for k, p in everything.items() if k[0] is not Direction.INBOUND_TLS}
    tls = sorted((p, port) for (d, port), p in everything.items() if d is Direction.INBOUND_TLS)
    # an HTTP port's mTLS ends in the HTTP subsystem (its routes see the client certificate); a TCP port's
    # in a stream TLS listener
    http_tls = [(p, port) for p, port in tls if port in s.inbound_http_ports]
    stream_tls = [(p, port) for p, port in tls if port not in s.inbound_http_ports]
    # the mirror listener is always there (so an http server never lacks a `listen`, which would
    # take nginx's default *:80); a new mirror needs no reload
    listen_ports = sorted([*ports.values(), s.mirror_port])
    node_listen = [{"ip": "127.0.0.1", "port": p} for p in listen_ports]
    inbound_internal = sorted([*(p for (d, _), p in ports.items() if d is Direction.INBOUND), *(p for p, _ in http_tls)])
    # proxy_bind takes variables; an empty value binds nothing (outbound upstreams, and the mirror
    # listener's: a copy goes to the mirrored cluster like an outbound request). APISIX's own
    # /proxy_mirror location has no proxy_bind either: the copy reaches 127.0.0.1 unbound.
    bind_map = "".join(f"        {p} {INBOUND_SOURCE_V4};\n" for p in inbound_internal)
    http_snippet = ("map $server_port $amesh_upstream_bind {\n"
                    "        default \"\";\n" + bind_map + "    }\n"
                    # Connection is hop-by-hop (Envoy never forwards it), but a route with enable_websocket
                    # copies the client's Connection upstream, so a client's `close` closed every pooled
                    # sidecar→sidecar and sidecar→app connection (measured: ~1,800 TIME-WAITs on the app in 3 s).
                    # Only an upgrade keeps its `Connection: upgrade`.
                    "    map $http_upgrade $amesh_client_connection {\n"
                    "        default \"\";\n"
                    "        \"~.\" \"upgrade\";\n"
                    "    }" + _mtls_http(s))
    return {
        "apisix": {
            "node_listen": node_listen,
            "enable_ipv6": s.ipv6,
            "proxy_mode": "http&stream",
            "stream_proxy": {
                "tcp": [{"addr": a} for p in (s.outbound_port, s.inbound_port) for a in _listen(p, s.ipv6)]
                + [{"addr": f"127.0.0.1:{p}", "tls": True} for p, _ in stream_tls],
            },
            # APISIX's TLS listeners: only the inbound mTLS ones of HTTP ports (the default 9443 takes a port
            # the app may want; apisix/config.py turns it off)
            **({"ssl": {"enable": True, "listen": [{"ip": "127.0.0.1", "port": p} for p, _ in http_tls]}}
               if http_tls else {}),
            "extra_lua_path": f"{s.lua_dir}/?.lua",
            "lua_module_hook": HOOK,
        },
        "plugins": [*HTTP_PLUGINS, PASSTHROUGH_PLUGIN, RBAC_PLUGIN],
        "stream_plugins": [*STREAM_PLUGINS, PASSTHROUGH_PLUGIN, RBAC_PLUGIN] + ([TLS_PLUGIN] if s.mtls_dir else []),
        "nginx_config": {
            "user": f"{s.proxy_user} {s.proxy_group}",
            "http_configuration_snippet": http_snippet,
            # retry (the upstream's `retries`) only what Istio's default retry_on does (connect-failure,
            # refused-stream, …): nginx's default also retries read timeouts, which turns a route timeout of
            # T into 502 after (retries + 1) × T where Envoy answers 504 after T (measured in the local mesh)
            "http_server_location_configuration_snippet": "proxy_bind $amesh_upstream_bind;\n"
                                                          "            proxy_next_upstream error;\n"
                                                          "            more_set_input_headers "
                                                          "\"Connection: $amesh_client_connection\";"
                                                          + _mtls_location(s),
            # stream: the ngx variable $server_port is the capture port (the hook overrides only
            # APISIX's view), so connections accepted on 15006 leave from Istio's inbound source.
            # APISIX has no stream *server* snippet: proxy_bind at stream level is inherited by its servers.
            "stream_configuration_snippet": (
                "map $server_port $amesh_stream_bind {\n"
                "        default \"\";\n"
                f"        {s.inbound_port} {INBOUND_SOURCE_V4};\n"
                + "".join(f"        {p} {INBOUND_SOURCE_V4};\n" for p, _ in stream_tls) +
                "    }\n"
                "    proxy_bind $amesh_stream_bind;" + _tcp_mtls_server(s)),
        },
        "plugin_attr": {
            "amesh": {
                # the mirror listener has no original port: routes there match the direction only
                "http_ports": {str(p): ({"port": port, "direction": d.value} if d is not None
                                        else {"direction": MIRROR_DIRECTION})
                               for (d, port), p in sorted([*ports.items(), ((None, None), s.mirror_port),
                                                           *(((Direction.INBOUND, port), p) for p, port in http_tls)],
                                                          key=lambda kv: kv[1])},
                "inbound_port": s.inbound_port,
                "outbound_port": s.outbound_port,
                **({"mtls_dir": s.mtls_dir, "tcp_mtls_port": s.tcp_mtls_port} if s.mtls_dir else {}),
                # TLS listener -> the pod port it terminates mTLS for (the hook: its ssl phase, its routes)
                **({"tls_ports": {str(p): port for p, port in tls}} if tls else {}),
            }
        },
    }


def _mtls_http(s: DataPathSettings) -> str:
    """The upstream SNI: Istio's for an mTLS upstream (amesh.mtls sets $amesh_sni), else APISIX's
    own (the final $upstream_host, read when the connection is made)."""
    if not s.mtls_dir:
        return ""
    return ("\n    map $amesh_sni $amesh_ssl_name {\n"
            "        \"\" $upstream_host;\n"
            "        default $amesh_sni;\n"
            "    }")


def _mtls_location(s: DataPathSettings) -> str:
    """Istio mTLS upstreams (lua/amesh/mtls.lua): nginx's verification on, so the Lua verdict runs on
    every upstream handshake (the hook turns nginx's host-name check off per request: Istio certificates
    carry no DNS name), and the SNI Istio sends (`amesh.sni`) instead of the Host header."""
    if not s.mtls_dir:
        return ""
    return ("\n            set $amesh_sni \"\";"
            "\n            proxy_ssl_name $amesh_ssl_name;"
            "\n            proxy_ssl_verify on;"
            # lua/amesh/alpn.lua finds this location's TLS context by these (server-only) options
            "\n            proxy_ssl_conf_command Options PrioritizeChaCha,ServerPreference;"
            "\n            proxy_ssl_verify_by_lua_block { require(\"amesh.mtls\").verify() }")


def _tcp_mtls_server(s: DataPathSettings) -> str:
    """Our stream server dialling Istio mTLS TCP upstreams (lua/amesh/mtls_origin.lua): the stream front
    diverts such connections here from a loopback source that keys the endpoint it picked. nginx's own
    verification stays off (it checks host names, Istio certificates carry none) and so does OpenSSL's
    default check (the trusted store is the rotating mesh root in Lua): verify() decides."""
    if not s.mtls_dir:
        return ""
    module = 'require("amesh.mtls_origin")'
    return (f"\n    lua_shared_dict {HOP_DICT} 4m;\n"
            "    upstream amesh_tcp_mtls {\n"
            "        server 127.0.0.1:1;  # every connection's endpoint is set by the balancer\n"
            f"        balancer_by_lua_block {{ {module}.balancer() }}\n"
            "    }\n"
            "    server {\n"
            f"        listen 127.0.0.1:{s.tcp_mtls_port};\n"
            "        set $amesh_origin_sni \"\";\n"
            f"        preread_by_lua_block {{ {module}.preread() }}\n"
            "        proxy_pass amesh_tcp_mtls;\n"
            "        proxy_ssl on;\n"
            "        proxy_ssl_server_name on;\n"
            "        proxy_ssl_name $amesh_origin_sni;\n"
            "        lua_upstream_skip_openssl_default_verify on;\n"
            "        proxy_ssl_conf_command Options PrioritizeChaCha;  # lua/amesh/alpn.lua: Istio's TCP ALPN\n"
            f"        proxy_ssl_verify_by_lua_block {{ {module}.verify() }}\n"
            "    }")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge for config dicts: `extra` wins on scalars and lists, dicts merge (new dict)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
