"""The data-path part of APISIX's `conf/config.yaml` (pure; merged into apisix/config.py's render()).

The chosen outbound split (docs/data-path.md, design (a)): both capture ports are *stream* listeners;
the Lua hook makes the stream router see the original destination as server_addr/server_port. TCP
services are stream routes by original address and port; HTTP service ports are stream routes to
internal HTTP listeners on 127.0.0.1, one per (direction, port), where the translated HTTP routes run
(the listener stands for the original port: plugin_attr.amesh.http_ports tells the hook which).
A new HTTP port therefore changes this fragment (an APISIX reload); new routes do not.

Upstream connections must leave from the UID/GID the capture rules exempt (nginx user), and inbound
ones, like Istio's, from 127.0.0.6 / ::6 (`proxy_bind` chosen per internal listener by a map).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parents[1] / "lua"  # package data: amesh/origdst.lua, amesh/hook.lua
HOOK = "amesh.hook"  # lua_module_hook names must match ^[a-zA-Z._-]+$ (no digits)
INBOUND_SOURCE_V4, INBOUND_SOURCE_V6 = "127.0.0.6", "::6"


class Direction(enum.Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


@dataclass(frozen=True)
class DataPathSettings:
    outbound_port: int = 15001
    inbound_port: int = 15006
    ipv6: bool = False  # the pod has a non-link-local IPv6 address: listen on [::] too
    proxy_user: str = "istio-proxy"  # name of the exempt UID (1337) in the image
    proxy_group: str = "istio-proxy"  # name of the exempt GID (1337)
    outbound_http_ports: tuple[int, ...] = ()  # service ports istiod serves as HTTP (0.0.0.0_<port> HCM)
    inbound_http_ports: tuple[int, ...] = ()  # the pod's own declared HTTP ports (virtualInbound chains)
    internal_base: int = 15100  # internal listeners: outbound from here, inbound from internal_base+500
    lua_dir: str = field(default=str(LUA_DIR))

    def __post_init__(self) -> None:
        problems = []
        for name in ("outbound_port", "inbound_port", "internal_base"):
            if not 1 <= getattr(self, name) <= 65535:
                problems.append(f"{name} {getattr(self, name)} is not a port number (1-65535)")
        if self.outbound_port == self.inbound_port:
            problems.append("outbound_port and inbound_port must differ")
        for name in ("outbound_http_ports", "inbound_http_ports"):
            ports = getattr(self, name)
            bad = [p for p in ports if not isinstance(p, int) or not 1 <= p <= 65535]
            if bad:
                problems.append(f"{name}: {bad} are not port numbers")
            if len(set(ports)) != len(ports):
                problems.append(f"{name}: duplicate ports")
            if len(ports) > 500:
                problems.append(f"{name}: {len(ports)} ports, at most 500 fit the internal range")
        if self.internal_base + 1000 > 65536:
            problems.append(f"internal_base {self.internal_base} leaves no room for 1000 internal ports")
        if problems:
            raise ValueError("invalid data-path settings: " + "; ".join(problems))
        taken = {self.outbound_port, self.inbound_port}
        clash = sorted(taken & set(range(self.internal_base, self.internal_base + 1000)))
        if clash:
            raise ValueError(f"invalid data-path settings: capture ports {clash} inside the internal range")


def internal_ports(settings: DataPathSettings) -> dict[tuple[Direction, int], int]:
    """(direction, original port) -> the internal HTTP listener port on 127.0.0.1 (sorted, dense)."""
    out = {}
    for index, port in enumerate(sorted(settings.outbound_http_ports)):
        out[(Direction.OUTBOUND, port)] = settings.internal_base + index
    for index, port in enumerate(sorted(settings.inbound_http_ports)):
        out[(Direction.INBOUND, port)] = settings.internal_base + 500 + index
    return out


def _listen(port: int, ipv6: bool, *, host: str | None = None) -> list[str]:
    if host:
        return [f"{host}:{port}"]
    return [f"0.0.0.0:{port}"] + ([f"[::]:{port}"] if ipv6 else [])


def fragment(settings: DataPathSettings) -> dict[str, Any]:
    """The config.yaml keys the data path owns; deep-merge into the rest of the generated file."""
    s = settings
    ports = internal_ports(s)
    node_listen = [{"ip": "127.0.0.1", "port": p, "enable_http2": True} for p in sorted(ports.values())]
    inbound_internal = sorted(p for (d, _), p in ports.items() if d is Direction.INBOUND)
    # proxy_bind takes variables; an empty value binds nothing (outbound upstreams)
    bind_map = "".join(f"        {p} {INBOUND_SOURCE_V4};\n" for p in inbound_internal)
    http_snippet = ("map $server_port $amesh_upstream_bind {\n"
                    "        default \"\";\n" + bind_map + "    }")
    return {
        "apisix": {
            "node_listen": node_listen,
            "enable_ipv6": s.ipv6,
            "proxy_mode": "http&stream",
            "stream_proxy": {
                "tcp": [{"addr": a} for p in (s.outbound_port, s.inbound_port) for a in _listen(p, s.ipv6)],
            },
            "extra_lua_path": f"{s.lua_dir}/?.lua",
            "lua_module_hook": HOOK,
        },
        "nginx_config": {
            "user": f"{s.proxy_user} {s.proxy_group}",
            "http_configuration_snippet": http_snippet,
            "http_server_location_configuration_snippet": "proxy_bind $amesh_upstream_bind;",
            # stream: the ngx variable $server_port is the capture port (the hook overrides only
            # APISIX's view), so connections accepted on 15006 leave from Istio's inbound source
            "stream_configuration_snippet": (
                "map $server_port $amesh_stream_bind {\n"
                "        default \"\";\n"
                f"        {s.inbound_port} {INBOUND_SOURCE_V4};\n"
                "    }"),
            "stream_server_configuration_snippet": "proxy_bind $amesh_stream_bind;",
        },
        "plugin_attr": {
            "amesh": {
                "http_ports": {str(p): {"port": port, "direction": d.value}
                               for (d, port), p in sorted(ports.items(), key=lambda kv: kv[1])},
                "inbound_port": s.inbound_port,
                "outbound_port": s.outbound_port,
            }
        },
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge for config dicts: `extra` wins on scalars and lists, dicts merge (new dict)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
