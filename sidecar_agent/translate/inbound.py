r"""istiod's `virtualInbound` listener -> APISIX objects for the inbound capture port 15006 (pure).

Envoy picks a virtualInbound filter chain by the original destination port; so does this:

| virtualInbound chain                                  | APISIX                                                   |
|-------------------------------------------------------|----------------------------------------------------------|
| `destination_port: P` + HCM (inline route config)      | stream route (pod address, P) -> internal HTTP listener of inbound P; HTTP routes from the route config, each also requiring `amesh_direction == inbound` and `original_dst_port == P`, priorities above every outbound band |
| `destination_port: P` + tcp_proxy `inbound|P||`      | stream route (pod address, P) -> the app                 |
| no port (InboundPassthroughCluster), HTTP or TCP       | stream route (pod address) -> the original port (inbound passthrough) |
| `destination_port: 15006` (blackhole)                 | nothing: the Lua module reports no original destination for a connection dialled at 15006, so no route matches |

Sending to the app the way Istio does: an `inbound|P||` cluster of type ORIGINAL_DST (Istio 1.10+)
goes to the pod address and port P from 127.0.0.6 / ::6 (`upstream_bind_config`; apisix/datapath.py
binds it per internal listener); a STATIC cluster (Istio ≤ 1.9) to its endpoints (127.0.0.1:P). With
no CDS entry the modern behaviour is assumed. Transport-protocol / ALPN matches (mTLS vs plaintext
twins of a chain) collapse into one: the chain without TLS gives the routes. With a workload certificate
(`tls_listeners`), a port with a TLS chain gets `amesh-mtls` on its front routes (TLS to the port's TLS
listener; plaintext served only if a plaintext chain exists); an HTTP port's TLS listener is an HTTP one
where its HTTP routes run (they see the client certificate), a TCP port's a stream one with a route to the
same upstream (docs/data-path.md, "Inbound mTLS").

Security (rbac.py, docs/translation.md "Fail closed"): a chain's RBAC filters become the `amesh-rbac`
plugin, network ones on its stream routes, HTTP ones on its HTTP routes (the 404 catch-all included);
the inbound passthrough takes the network RBAC of the plaintext catch-all chains. A port (or the
catch-all) left with only TLS-terminating chains (PeerAuthentication STRICT) is denied when there is no
workload certificate (the catch-all always: undeclared ports have no TLS listener), as is a chain
with an unknown filter before its proxy: reported with effect "denied", never served as plaintext.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Sequence

from sidecar_agent.apisix import datapath
from sidecar_agent.translate import ids
from sidecar_agent.translate import rbac
from sidecar_agent.translate import upstream as upstream_mod
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.report import Coverage, Unsupported
from sidecar_agent.translate.route import translate_route_config
from sidecar_agent.translate.manager import MANAGER_PATH, read_manager
from sidecar_agent.translate.stream import PASSTHROUGH_LABEL
from sidecar_agent.xds.chains import HTTP, TCP, filter_chains, network_filters, tcp_clusters
DIRECTION_VAR = "amesh_direction"
PORT_VAR = "original_dst_port"
# Above every outbound band (route.py: bands ≤ 4000 × 100000 + routes): inbound always wins first.
INBOUND_PRIORITY = 1_000_000_000
INBOUND_SOURCE = {4: datapath.INBOUND_SOURCE_V4, 6: datapath.INBOUND_SOURCE_V6}
TLS, PLAIN = "tls", "plaintext"  # the transports a port's chains accept
TLS_LISTENER_ADDRESS = "127.0.0.1"  # the TLS listeners' address (apisix/datapath.py), what their routes match


@dataclass(frozen=True)
class InboundPart:
    routes: tuple[dict, ...]
    stream_routes: tuple[dict, ...]
    upstreams: tuple[dict, ...]
    http_ports: tuple[int, ...]  # DataPathSettings.inbound_http_ports
    report: tuple[Unsupported, ...]


def served_ports(listener) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(declared HTTP ports, declared ports with mTLS chains — PeerAuthentication STRICT or PERMISSIVE): the
    DataPathSettings' inbound_http_ports and inbound_tls_ports, from one walk of the chains."""
    chains = sorted(_port_chains(listener, None, True).items())
    return (tuple(port for port, (kind, *_) in chains if kind == "http"),
            tuple(port for port, (*_, modes) in chains if TLS in modes))


def http_ports(listener) -> tuple[int, ...]:
    return served_ports(listener)[0]


def tls_ports(listener) -> tuple[int, ...]:
    return served_ports(listener)[1]


def translate_inbound(listener, pod_ips: Sequence[str], internal: Mapping[int, int],
                      clusters: Mapping[str, object] | None = None,
                      tls_listeners: Mapping[int, int] | None = None) -> InboundPart:
    """`listener`: virtualInbound; `pod_ips`: the pod's addresses (INSTANCE_IPS); `internal`: inbound HTTP
    port -> internal listener port (apisix.datapath.internal_ports); `clusters`: CDS by name, if held;
    `tls_listeners`: port with mTLS chains -> its TLS listener, None without a workload certificate (then
    a port that requires mTLS is denied)."""
    if not pod_ips:
        raise TranslationError("inbound translation needs the pod's IP addresses")
    clusters = clusters or {}
    cov = Coverage("listener", listener.name)
    routes: list[dict] = []
    stream_routes: list[dict] = []
    upstreams: dict[str, dict] = {}
    target = _app_address(pod_ips)
    mtls = tls_listeners is not None
    chains = sorted(_port_chains(listener, cov, mtls).items())
    for port, (kind, payload, security, modes) in chains:
        network, http = security
        if kind == "http":
            if port not in internal:
                raise TranslationError(f"virtualInbound: HTTP port {port} has no internal listener "
                                       f"(regenerate conf/config.yaml with inbound_http_ports)")
            hop = _upstream(f"amesh-http-inbound|{port}", [("127.0.0.1", internal[port])],
                            {"amesh.internal": "http-inbound"})
            upstreams[hop["id"]] = hop
            target_id = hop["id"]
            http = rbac.per_route(payload[0], http, cov)
            routes += _guarded(_http_routes(payload, port, target, clusters, upstreams, cov), http)
        else:
            app = _app_upstream(payload, port, target, clusters, scheme="tcp")
            upstreams[app["id"]] = app
            target_id = app["id"]
        front = _guarded(_stream_routes(f"inbound|{port}|{kind}", pod_ips, port, target_id), network)
        if mtls and TLS in modes:
            if port not in tls_listeners:
                raise TranslationError(f"virtualInbound: port {port} requires mTLS and has no TLS listener "
                                       f"(regenerate conf/config.yaml with inbound_tls_ports)")
            for route in front:  # TLS to the port's TLS listener, plaintext as the chains allow
                route.setdefault("plugins", {})[datapath.TLS_PLUGIN] = {"tls_port": tls_listeners[port],
                                                                       "plaintext": PLAIN in modes}
            if kind == "tcp":  # an HTTP port's TLS listener is an HTTP one: the port's HTTP routes serve it
                stream_routes += _guarded(_stream_routes(f"inbound|{port}|tcp|tls", [TLS_LISTENER_ADDRESS],
                                                         tls_listeners[port], target_id), network)
        stream_routes += front
    # undeclared ports: to the original port on the pod (passthrough plugin sets the node)
    passthrough = _upstream("amesh-passthrough|inbound", [], dict(PASSTHROUGH_LABEL, **{"amesh.bind": target[1]}))
    upstreams[passthrough["id"]] = passthrough
    catch_all = _catch_all_security(listener, cov)
    for route in _guarded(_stream_routes("inbound|passthrough", pod_ips, None, passthrough["id"]), catch_all):
        route.setdefault("plugins", {})[datapath.PASSTHROUGH_PLUGIN] = {}
        stream_routes.append(route)
    return InboundPart(tuple(sorted(routes, key=lambda r: r["id"])),
                       tuple(sorted(stream_routes, key=lambda r: r["id"])),
                       tuple(upstreams[k] for k in sorted(upstreams)),
                       tuple(port for port, (kind, *_) in chains if kind == "http"), cov.entries())


def _guarded(routes: list[dict], security: "rbac.Security") -> list[dict]:
    """`routes` with the `amesh-rbac` plugin the chain's security asks for (none: unchanged)."""
    conf = security.plugin()
    if conf is not None:
        for route in routes:
            route.setdefault("plugins", {})[rbac.PLUGIN] = copy.deepcopy(conf)
    return routes


def _catch_all_security(listener, cov: Coverage) -> "rbac.Security":
    """What the inbound passthrough (ports without a chain of their own) must enforce: the network RBAC
    of the plaintext catch-all chains (Istio's TCP version of the policies, at least as strict as the
    HTTP one); denied when only TLS-terminating catch-all chains are left (STRICT), or when the HTTP
    catch-all enforces RBAC that no TCP chain carries. Only denials are reported (the chains' other
    filters are the ports' chains' too)."""
    scratch = Coverage(cov.kind, cov.resource)
    parts: list[rbac.Security] = []
    seen = http_rbac = tls_only = False
    for chain in filter_chains(listener, default=False):
        if chain.filter_chain_match.HasField("destination_port"):
            continue  # a port's own chain, or the blackhole chain of the capture port itself
        seen = True
        if rbac.mtls_only(chain):
            tls_only = True
            continue
        parts.append(rbac.network_security(chain, scratch, http=False))
        for network_filter in network_filters(chain):
            if network_filter.kind == HTTP:
                # only whether it enforces anything matters: its matchers are the ports' chains' too
                http_part = rbac.http_security(network_filter.config, Coverage(cov.kind, cov.resource),
                                               MANAGER_PATH)
                http_rbac = http_rbac or bool(http_part.deny) or any(
                    f["action"] != "LOG" for f in http_part.filters)
            if network_filter.kind in (HTTP, TCP):
                break
    out = rbac.Security()
    unique: list[dict] = []
    for part in parts:
        for entry in part.filters:
            if entry not in unique:
                unique.append(entry)
        if part.deny:
            out.refuse(part.deny)
    out.filters = unique
    for entry in scratch.entries():
        if entry.effect == "denied":
            cov.deny(f"inbound_passthrough.{entry.field}", entry.count)
    if seen and not parts and tls_only:
        cov.deny("filter_chains[catch-all].transport_socket[mTLS only (PeerAuthentication STRICT): "
                 "undeclared ports have no TLS listener: denied]")
        out.refuse("mTLS required: undeclared ports have no TLS listener")
    elif http_rbac and not unique:
        cov.deny("filter_chains[catch-all].http_filters.rbac[HTTP RBAC on passthrough ports without "
                 "a network RBAC: denied]")
        out.refuse("HTTP RBAC on the catch-all chain cannot be evaluated on passthrough ports")
    return out


def _port_chains(listener, cov: Coverage | None, mtls: bool) -> dict[int, tuple[str, object, tuple, frozenset]]:
    """destination port -> ("http", (RouteConfiguration, Manager), (network, http Security), modes) |
    ("tcp", cluster, (network, http Security), modes); plaintext twin preferred; modes: TLS and/or PLAIN,
    the transports the port's chains accept. Without `mtls` (no workload certificate) a port with only
    TLS chains (mTLS required) gets a network Security that denies."""
    found: dict[int, tuple[str, object, tuple, bool]] = {}
    modes: dict[int, set] = {}
    for chain in filter_chains(listener, default=False):  # the default chain is not a port's
        match = chain.filter_chain_match
        port = match.destination_port.value if match.HasField("destination_port") else None
        if port is None or port == listener.address.socket_address.port_value:
            continue  # passthrough / blackhole chains: handled by the catch-all and the Lua module
        tls = match.transport_protocol == "tls" or rbac.mtls_only(chain)  # a TLS-terminating chain
        entry = _chain_payload(chain, f"{listener.name}:{port}", cov)
        if entry is None:
            continue
        if port not in found or (found[port][3] and not tls):
            found[port] = (*entry, tls)
        modes.setdefault(port, set()).add(TLS if tls else PLAIN)
        if tls and cov is not None and not mtls:
            cov.add("filter_chains.transport_socket[mTLS termination without a workload certificate]")
    out = {}
    for port, (kind, payload, security, tls) in found.items():
        if tls and not mtls:  # no plaintext twin: the port requires mTLS (PeerAuthentication STRICT)
            if cov is not None:
                cov.deny(f"filter_chains[{port}].transport_socket[mTLS only (PeerAuthentication STRICT): "
                         "no workload certificate (no CA configured): denied]")
            denied = rbac.Security()
            denied.refuse(f"port {port} requires mTLS and the sidecar has no workload certificate")
            # new connections are closed; requests on connections the stream front already holds
            # (keep-alive from before the change) are refused by the HTTP routes
            security = (denied, denied)
        out[port] = (kind, payload, security, frozenset(modes[port]))
    return out


def _chain_payload(chain, where: str, cov: Coverage | None):
    """("http", (RouteConfiguration, Manager), security) or ("tcp", cluster, security) of the chain's
    first HCM / tcp_proxy; security: (network, http) rbac.Security of the filters before them."""
    cov = cov if cov is not None else Coverage("listener", where)
    network = rbac.network_security(chain, cov, http=False)  # reports the filters before the proxy
    for network_filter in network_filters(chain):
        if network_filter.kind == HTTP:
            hcm = network_filter.config
            manager = read_manager(hcm, cov, inbound=True)
            http = rbac.http_security(hcm, cov, MANAGER_PATH)
            if not hcm.HasField("route_config"):
                cov.add(f"{MANAGER_PATH}[rds on inbound]")
                return None
            return "http", (hcm.route_config, manager), (network, http)
        if network_filter.kind == TCP:
            return "tcp", (tcp_clusters(network_filter.config) or ("",))[0], (network, rbac.Security())
    return None


def _app_address(pod_ips: Sequence[str]) -> tuple[str, str]:
    """(address the app is reached at, source to bind): IPv4 first, as Istio's bind config lists it."""
    v4 = [ip for ip in pod_ips if ":" not in ip]
    if v4:
        return v4[0], INBOUND_SOURCE[4]
    return pod_ips[0], INBOUND_SOURCE[6]


def _upstream(name: str, nodes: list[tuple[str, int]], labels: dict, scheme: str = "tcp") -> dict:
    return {"id": ids.stable_id("u", name), "name": name, "type": "roundrobin", "scheme": scheme,
            "nodes": [{"host": h, "port": p, "weight": 1} for h, p in nodes], "labels": labels}


def _app_upstream(cluster_name: str, port: int, target: tuple[str, str], clusters: Mapping[str, object],
                  scheme: str) -> dict:
    cluster = clusters.get(cluster_name)
    if cluster is not None and cluster.type == 0 and cluster.load_assignment.endpoints:  # STATIC (Istio ≤ 1.9)
        nodes = [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
                 for group in cluster.load_assignment.endpoints for e in group.lb_endpoints]
        labels = {"istio.cluster": "static"}
    else:  # ORIGINAL_DST with upstream_bind_config (Istio 1.10+): the pod address, from 127.0.0.6
        nodes = [(target[0], port)]
        labels = {"amesh.bind": target[1]}
    return _upstream(f"{cluster_name}|{scheme}", nodes, labels, scheme)


def _stream_routes(name: str, pod_ips: Sequence[str], port: int | None, upstream_id: str) -> list[dict]:
    out = []
    for ip in pod_ips:
        route = {"id": ids.stable_id("sr", name, ip), "name": f"{name}/{ip}", "server_addr": ip,
                 "upstream_id": upstream_id}
        if port is not None:
            route["server_port"] = port
        out.append(route)
    return out


def _http_routes(payload, port: int, target: tuple[str, str], clusters: Mapping[str, object],
                 upstreams: dict[str, dict], cov: Coverage) -> list[dict]:
    route_config, manager = payload
    rc = copy.deepcopy(route_config)
    rc.name = f"inbound|{port}|{rc.name}"  # ids distinct from outbound ones; no port-name scoping
    translated = translate_route_config(rc, websocket=manager.websocket)
    for entry in translated.report:
        cov.add(f"route_config.{entry.field}", entry.count)
    replaced = {}
    for ref in translated.refs:
        app = _app_upstream(ref.cluster, port, target, clusters, scheme="http")
        body = upstream_mod.build(ref, None, None)  # the route's policy: timeouts, retries
        app.update(timeout=body["timeout"], retries=body["retries"])
        if "retry_timeout" in body:
            app["retry_timeout"] = body["retry_timeout"]
        app["id"] = ids.stable_id("u", f"{ref.cluster}|http", ref.policy.variant())
        upstreams[app["id"]] = app
        replaced[ref.id] = app["id"]
    scope = [[DIRECTION_VAR, "==", "inbound"], [PORT_VAR, "==", port]]
    # Below every inbound route of the port, above every outbound one: an inbound request no inbound
    # route takes answers 404 (as Envoy's inbound listener) instead of falling to an outbound route.
    out = [{"id": ids.stable_id("r", f"inbound|{port}|catch-all"), "name": f"inbound|{port}/catch-all",
            "priority": INBOUND_PRIORITY, "uris": ["/*"], "vars": [list(v) for v in scope],
            "plugins": {"fault-injection": {"abort": {"http_status": 404, "body": ""}}}}]
    for route in translated.routes:
        route = copy.deepcopy(route)
        if "proxy-mirror" in (route.get("plugins") or {}):
            # the copy would go through the mirror listener to an outbound cluster; Istio sets no
            # mirror on inbound routes: not translated
            del route["plugins"]["proxy-mirror"]
            cov.add("route_config.virtual_hosts.routes.route.request_mirror_policies[inbound: not translated]")
        route["vars"] = scope + route.get("vars", [])
        route["priority"] = INBOUND_PRIORITY + route["priority"]
        if "upstream_id" in route:
            route["upstream_id"] = replaced.get(route["upstream_id"], route["upstream_id"])
        split = (route.get("plugins") or {}).get("traffic-split")
        for rule in (split or {}).get("rules", []):
            for entry in rule.get("weighted_upstreams", []):
                if "upstream_id" in entry:
                    entry["upstream_id"] = replaced.get(entry["upstream_id"], entry["upstream_id"])
        out.append(route)
    return out
