"""HttpConnectionManager and Listener settings -> what the routes inherit, and what is reported (pure).

One place for the settings outbound (listener.py) and inbound (inbound.py) connection managers share:

| Envoy | APISIX |
|---|---|
| `upgrade_configs` `websocket` (Istio sets it on every connection manager) | `enable_websocket: true` on the forwarding routes of the route configurations it serves; a route's own `upgrade_configs` wins (route.py) |
| `http_filters` router, fault, CORS | carried: the per-route configs are read by action.py |
| other `upgrade_configs`, other HTTP filters, every other set field (`stream_idle_timeout` > 0, `normalize_path`, `use_remote_address`, `tracing`, `request_id_extension`, `forward_client_cert_details`, `stat_prefix`, …) | reported |
| Listener `listener_filters` original_dst | the Lua hook reads SO_ORIGINAL_DST (docs/data-path.md) |
| Listener `listener_filters` tls/http inspector, `listener_filters_timeout`, … | reported: chains are not picked by TLS or ALPN |

`stream_idle_timeout: 0s` (Istio's value) disables Envoy's idle timer: nothing to carry. A positive
one has no place that keeps Envoy's meaning: APISIX's upstream `timeout.read` already carries the
route's own `idle_timeout` and timeouts, and the manager's value would change every upstream's id
(reported instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar_agent.translate.report import Coverage
from sidecar_agent.xds import types

# HTTP filters whose per-route configuration (`typed_per_filter_config`) the translation reads.
PER_ROUTE_FILTERS = frozenset({types.FAULT_FILTER, types.CORS_FILTER})
# HTTP filters the translation carries over (the router is APISIX's proxying itself).
CARRIED_HTTP_FILTERS = PER_ROUTE_FILTERS | {"envoy.filters.http.router"}
MANAGER_PATH = "filter_chains.filters.http_connection_manager"
# route_specifier fields are read by the callers; the rest by `read_manager`.
_MANAGER_HANDLED = frozenset({"rds", "route_config", "http_filters", "upgrade_configs", "stream_idle_timeout"})
_LISTENER_HANDLED = frozenset({
    "name", "address", "filter_chains", "default_filter_chain", "traffic_direction", "listener_filters",
    # the capture rules and the stream front do what these do: original destinations reach the listener
    "use_original_dst", "bind_to_port", "deprecated_v1"})  # deprecated_v1 holds only bind_to_port
_ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"


@dataclass(frozen=True)
class Manager:
    """What the routes of a connection manager inherit from it."""

    websocket: bool = False


def read_manager(hcm, cov: Coverage, path: str = MANAGER_PATH, *, inbound: bool = False) -> Manager:
    """The settings of `hcm` its routes inherit; everything else set on it is reported into `cov`.
    `inbound`: the filters before the router are rbac.http_security's (RBAC enforced, unknown ones fail
    closed); only those after the router are reported here."""
    cov.unhandled(hcm, _MANAGER_HANDLED, path)
    after_router = not inbound
    for http_filter in hcm.http_filters:
        if http_filter.name == "envoy.filters.http.router":
            after_router = True
        if after_router and http_filter.name not in CARRIED_HTTP_FILTERS:
            cov.add(f"{path}.http_filters[{http_filter.name}]")
    websocket = False
    for upgrade in hcm.upgrade_configs:
        if upgrade.upgrade_type.lower() == "websocket" and not upgrade.filters:
            websocket = not upgrade.HasField("enabled") or upgrade.enabled.value
        else:
            cov.add(f"{path}.upgrade_configs[{upgrade.upgrade_type}]")
    idle = hcm.stream_idle_timeout
    if hcm.HasField("stream_idle_timeout") and (idle.seconds or idle.nanos):
        cov.add(f"{path}.stream_idle_timeout[{idle.seconds + idle.nanos / 1e9:g}s: not applied]")
    return Manager(websocket=websocket)


def report_listener(listener, cov: Coverage) -> None:
    """The Listener's own fields (not its chains) that are not carried over."""
    cov.unhandled(listener, _LISTENER_HANDLED, "")
    for listener_filter in listener.listener_filters:
        if listener_filter.name != _ORIGINAL_DST_FILTER:
            cov.add(f"listener_filters[{listener_filter.name}]")
