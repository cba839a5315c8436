"""The local mesh as data (pure): Bookinfo's workloads and services, their addresses on the mesh's bridge,
and the Istio objects istiod reads for them (ServiceEntry + WorkloadEntry, as a VM-style mesh without
Kubernetes would declare them).

Addresses: one /24 per mesh, `.1` the bridge, `.2` istiod, pods from `.10`, the host outside the mesh
at `.250`. Service VIPs come from Istio's auto-allocation range (240.240.0.0/16); they are never routed:
the capture rules redirect connections to them before routing matters (the pod's default route via the
bridge only makes connect() possible).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

NAMESPACE = "default"
DOMAIN = "cluster.local"
SUBNET = ipaddress.ip_network("10.77.0.0/24")
VIP_BASE = ipaddress.ip_address("240.240.0.10")


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    protocol: str  # Istio port protocol: HTTP or TCP
    vip: str

    @property
    def host(self) -> str:
        return f"{self.name}.{NAMESPACE}.svc.{DOMAIN}"

    @property
    def port_name(self) -> str:
        return f"{self.protocol.lower()}-{self.name}"


@dataclass(frozen=True)
class Workload:
    pod: str  # the pod name (and the sidecar's proxy id `<pod>.<namespace>`)
    service: Service
    version: str
    ip: str

    @property
    def app(self) -> str:
        return self.service.name

    @property
    def service_account(self) -> str:
        return f"bookinfo-{self.service.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {"app": self.app, "version": self.version}


@dataclass(frozen=True)
class Mesh:
    services: tuple[Service, ...]
    workloads: tuple[Workload, ...]
    bridge_ip: str
    istiod_ip: str
    external_ip: str  # a host outside the mesh (no ServiceEntry): reached only under ALLOW_ANY
    external_port: int = 8080
    prefixlen: int = SUBNET.prefixlen
    istio_objects: tuple[dict, ...] = field(default=(), compare=False)

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def workload(self, pod: str) -> Workload:
        for workload in self.workloads:
            if workload.pod == pod:
                return workload
        raise KeyError(pod)

    @property
    def discovery_address(self) -> str:
        return f"{self.istiod_ip}:15010"


# (service, port, protocol, versions): Bookinfo, plus a TCP service standing in for its mongodb
BOOKINFO = (
    ("productpage", 9080, "HTTP", ("v1",)),
    ("details", 9080, "HTTP", ("v1",)),
    ("reviews", 9080, "HTTP", ("v1", "v2", "v3")),
    ("ratings", 9080, "HTTP", ("v1",)),
    ("mongodb", 27017, "TCP", ("v1",)),
)


def bookinfo(subnet: ipaddress.IPv4Network = SUBNET) -> Mesh:
    hosts = list(subnet.hosts())
    services, workloads = [], []
    next_pod = 9  # hosts[9] is .10
    for index, (name, port, protocol, versions) in enumerate(BOOKINFO):
        service = Service(name, port, protocol, str(VIP_BASE + index))
        services.append(service)
        for version in versions:
            workloads.append(Workload(f"{name}-{version}", service, version, str(hosts[next_pod])))
            next_pod += 1
    return Mesh(tuple(services), tuple(workloads), bridge_ip=str(hosts[0]), istiod_ip=str(hosts[1]),
                external_ip=str(hosts[249]), prefixlen=subnet.prefixlen)


def service_entry(service: Service) -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": service.name, "namespace": NAMESPACE},
        "spec": {
            "hosts": [service.host],
            "addresses": [service.vip],
            "ports": [{"number": service.port, "name": service.port_name, "protocol": service.protocol,
                       "targetPort": service.port}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": service.name}},
        },
    }


def workload_entry(workload: Workload, mtls: bool = False) -> dict:
    """`mtls`: the pods terminate Istio mTLS (the injection template's `security.istio.io/tlsMode: istio`), so
    istiod's auto-mTLS dials them with it."""
    labels = dict(workload.labels, **({TLS_MODE_LABEL: "istio"} if mtls else {}))
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": workload.pod, "namespace": NAMESPACE, "labels": labels},
        "spec": {"address": workload.ip, "labels": labels, "serviceAccount": workload.service_account},
    }


def registry(mesh: Mesh, mtls: bool = False) -> list[dict]:
    """What the mesh's services and workloads are, for istiod's config directory."""
    return [*(service_entry(s) for s in mesh.services), *(workload_entry(w, mtls) for w in mesh.workloads)]


def mesh_config(mesh: Mesh, outbound_policy: str = "ALLOW_ANY", mtls: bool = False) -> dict:
    """istiod's MeshConfig. xDS stays plaintext (15010); with `mtls` istiod is also the CA (15012) and
    auto-mTLS is on, as in a default Istio install; without it the sidecars talk plaintext."""
    return {
        "trustDomain": DOMAIN,
        "rootNamespace": "istio-system",
        "enableAutoMtls": mtls,
        "outboundTrafficPolicy": {"mode": outbound_policy},
        "defaultConfig": {"discoveryAddress": mesh.discovery_address, "controlPlaneAuthPolicy": "NONE"},
    }


TLS_MODE_LABEL = "security.istio.io/tlsMode"


def hosts_file(mesh: Mesh) -> str:
    """/etc/hosts for the pods (`ip netns exec` bind-mounts /etc/netns/<ns>/hosts): the short, namespaced
    and full names of every service resolve to its VIP, as cluster DNS would."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    for s in mesh.services:
        lines.append(f"{s.vip} {s.host} {s.name}.{NAMESPACE}.svc {s.name}.{NAMESPACE} {s.name}")
    lines.append(f"{mesh.external_ip} external.example")
    return "\n".join(lines) + "\n"


def resolve(mesh: Mesh, host: str) -> str:
    """The address a pod's resolver gives `host` (a service name in any of its forms, the outside host,
    or an IP literal). KeyError for an unknown name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    for s in mesh.services:
        if host in (s.name, f"{s.name}.{NAMESPACE}", f"{s.name}.{NAMESPACE}.svc", s.host):
            return s.vip
    if host == "external.example":
        return mesh.external_ip
    raise KeyError(host)
