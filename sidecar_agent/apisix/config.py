"""APISIX's `conf/config.yaml` for the sidecar, as a pure function of a few settings (golden-tested).

What the sidecar needs from it (apisix-facts.md): the capture listeners 15001 (outbound) and 15006
(inbound) instead of 9080; the Admin API on 127.0.0.1 only, with a random per-pod key; the
configuration source (API-driven standalone, or the apisix.json file); Prometheus export on
loopback; nginx workers running as the UID/GID the capture rules exempt (or every upstream
connection loops back into the proxy); an open-file limit the pod actually allows. The data path
(apisix/datapath.py: stream front on 15001/15006, internal HTTP listeners, the Lua hook and the
passthrough plugin) is merged in: `render(settings, data_path)`, data_path from
`datapath.settings_for(...)` or `Translator.data_path_settings`.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any

import yaml

from sidecar_agent.apisix import datapath


class Mode(enum.Enum):
    API = "api"  # deployment.role traditional + config_provider yaml: PUT /apisix/admin/configs
    FILE = "file"  # deployment.role data_plane + config_provider json: conf/apisix.json


@dataclass(frozen=True)
class ApisixSettings:
    admin_key: str
    mode: Mode = Mode.API
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int = 9180
    prometheus_port: int = 15091  # APISIX's default 9091, moved next to Istio's agent ports
    worker_user: str = "istio-proxy"  # the name of UID 1337 in the image
    worker_group: str = "istio-proxy"  # the name of GID 1337
    worker_processes: int = 2  # Istio's default proxy concurrency
    nofile_limit: int = 1024 * 1024  # RLIMIT_NOFILE of the pod
    # API mode: the shared dict APISIX keeps the whole pushed configuration in (as JSON, one value).
    # APISIX's 10m holds ~1,500 services; 10,000 need ~70 MB. Shared memory is reserved, not used: pages
    # count only once written. A bigger size needs an APISIX restart.
    config_dict_mb: int = 256

    def __post_init__(self) -> None:
        problems = []
        if len(self.admin_key) < 16:
            problems.append("admin_key must be at least 16 characters")
        for name in ("outbound_port", "inbound_port", "admin_port", "prometheus_port"):
            if not 1 <= getattr(self, name) <= 65535:
                problems.append(f"{name} must be a port number (1-65535)")
        if len({self.outbound_port, self.inbound_port, self.admin_port, self.prometheus_port}) < 4:
            problems.append("outbound, inbound, admin and prometheus ports must differ")
        if self.worker_processes < 1:
            problems.append("worker_processes must be at least 1")
        if self.config_dict_mb < 10:
            problems.append(f"config_dict_mb {self.config_dict_mb} is below APISIX's own 10 (MB)")
        if self.nofile_limit < 256:
            problems.append(f"nofile_limit {self.nofile_limit} is too low for APISIX (needs ≥ 256)")
        if problems:
            raise ValueError("invalid APISIX settings: " + "; ".join(problems))

    @property
    def worker_connections(self) -> int:
        # Each proxied request holds two descriptors (client and upstream); stay under the limit.
        return max(128, min(10620, self.nofile_limit // 2))


def new_admin_key() -> str:
    """A random per-pod Admin API key (never the well-known default key)."""
    return secrets.token_hex(16)


def render(settings: ApisixSettings, data_path: datapath.DataPathSettings | None = None) -> dict[str, Any]:
    """config.yaml as data. `data_path` (default: no HTTP ports yet) must name the same capture
    ports and worker user/group as `settings`; the internal HTTP listeners replace node_listen."""
    s = settings
    dp = data_path or datapath.DataPathSettings(outbound_port=s.outbound_port, inbound_port=s.inbound_port,
                                                proxy_user=s.worker_user, proxy_group=s.worker_group)
    mismatch = [name for name, ours, theirs in (
        ("outbound_port", s.outbound_port, dp.outbound_port), ("inbound_port", s.inbound_port, dp.inbound_port),
        ("worker_user", s.worker_user, dp.proxy_user), ("worker_group", s.worker_group, dp.proxy_group))
        if ours != theirs]
    if mismatch:
        raise ValueError(f"APISIX and data-path settings disagree on {', '.join(mismatch)}")
    internal = set(datapath.internal_ports(dp).values())
    clash = sorted(internal & {s.admin_port, s.prometheus_port})
    if clash:
        raise ValueError(f"internal HTTP listener ports {clash} clash with the admin/prometheus ports")
    deployment: dict[str, Any]
    if s.mode is Mode.API:
        deployment = {
            "role": "traditional",
            "role_traditional": {"config_provider": "yaml"},
            "admin": {
                "admin_key_required": True,
                "admin_key": [{"name": "amesh-agent", "key": s.admin_key, "role": "admin"}],
                "admin_listen": {"ip": "127.0.0.1", "port": s.admin_port},
                "allow_admin": ["127.0.0.0/8", "::1/128"],
            },
        }
    else:
        # conf/apisix.json: APISIX parses it ~10x faster than apisix.yaml (sink/file.py)
        deployment = {"role": "data_plane", "role_data_plane": {"config_provider": "json"}}
    nginx: dict[str, Any] = {
        "user": f"{s.worker_user} {s.worker_group}",
        "worker_processes": s.worker_processes,
        "worker_rlimit_nofile": s.nofile_limit,
        "event": {"worker_connections": s.worker_connections},
        "error_log": "/dev/stderr",
        "error_log_level": "warn",
    }
    if s.mode is Mode.API:
        nginx["meta"] = {"lua_shared_dict": {"standalone-config": f"{s.config_dict_mb}m"}}
    base = {
        "apisix": {
            # h2c with prior knowledge and HTTP/1.1 on every listener; APISIX ≥ 3.9 refuses the per-port key
            "enable_http2": True,
            "enable_ipv6": True,
            "enable_control": False,
            "enable_admin": s.mode is Mode.API,
            "enable_server_tokens": False,
            # APISIX's default ssl.enable listens for TLS on 0.0.0.0:9443 and [::]:9443 (measured on 3.18):
            # a port taken from the app's network namespace (an app on 9443 could not bind it). TLS
            # in the mesh is per route/upstream (amesh.tls), never this listener.
            "ssl": {"enable": False},
        },
        "deployment": deployment,
        "nginx_config": nginx,
        "plugin_attr": {
            "prometheus": {
                "export_uri": "/apisix/prometheus/metrics",
                "export_addr": {"ip": "127.0.0.1", "port": s.prometheus_port},
            }
        },
    }
    return datapath.merge(base, datapath.fragment(dp))


def render_yaml(settings: ApisixSettings, data_path: datapath.DataPathSettings | None = None) -> str:
    return "# generated by amesh-agent: do not edit\n" + yaml.safe_dump(render(settings, data_path), sort_keys=False)


def prometheus_url(settings: ApisixSettings) -> str:
    return f"http://127.0.0.1:{settings.prometheus_port}/apisix/prometheus/metrics"


def admin_url(settings: ApisixSettings) -> str:
    return f"http://127.0.0.1:{settings.admin_port}"
