"""The standard listeners of a traffic test: the pod's proxy ports and apps, the remote services."""

from __future__ import annotations

from netns_tests import pods, processes

OUTBOUND, INBOUND, DNS_PORT = 15001, 15006, 15053
APP_PORT, EXCLUDED_IN_PORT, LOCAL_APP_PORT = 8080, 15021, 7000
REMOTE_PORT, EXCLUDED_OUT_PORT = 80, 8443


def endpoint(host: str, port: int) -> str:
    """agent.py's address syntax: 1.2.3.4:80 or [fd00::1]:80."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def label(proto: str, host: str, port: int) -> str:
    """The listener label agent.py reports, e.g. tcp:0.0.0.0:15001."""
    return f"{proto}:{endpoint(host, port)}"


def any_addr(family: int) -> str:
    return "::" if family == 6 else "0.0.0.0"


def families(network: pods.Network) -> tuple[int, ...]:
    return (4, 6) if network.ipv6 else (4,)


def pod_listeners(network: pods.Network, *, tproxy: bool = False) -> processes.Helper:
    """15001/15006/15053 (tcp+udp) as the proxy would, plus an app on 8080, 15021 and 127.0.0.1:7000."""
    tcp, udp, transparent = [], [], []
    for family in families(network):
        any_ = any_addr(family)
        tcp += [endpoint(any_, p) for p in (OUTBOUND, DNS_PORT, APP_PORT, EXCLUDED_IN_PORT)]
        (transparent if tproxy else tcp).append(endpoint(any_, INBOUND))
        udp.append(endpoint(any_, DNS_PORT))
    tcp.append(endpoint("127.0.0.1", LOCAL_APP_PORT))
    return processes.listener(network.pod, "pod", tcp=tcp, udp=udp, tproxy_tcp=transparent)


def remote_listeners(network: pods.Network) -> processes.Helper:
    """Every remote service (all of remote's addresses): tcp 80, 8443, 53 and udp 53."""
    tcp, udp = [], []
    for family in families(network):
        any_ = any_addr(family)
        tcp += [endpoint(any_, p) for p in (REMOTE_PORT, EXCLUDED_OUT_PORT, 53)]
        udp.append(endpoint(any_, 53))
    return processes.listener(network.remote, "remote", tcp=tcp, udp=udp)
