"""Small builders of Istio-shaped xDS resources for the agent tests (until/besides istiogen)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2


def http_listener(port: int, route_name: str | None = None) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_0.0.0.0_{port}")
    manager.rds.route_config_name = route_name or str(port)
    manager.rds.config_source.ads.SetInParent()
    typed = any_pb2.Any()
    typed.Pack(manager)
    return listener_pb2.Listener(
        name=f"0.0.0.0_{port}",
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=typed
                    )
                ]
            )
        ],
    )


def eds_cluster(name: str) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    cluster.eds_cluster_config.service_name = name
    cluster.eds_cluster_config.eds_config.CopyFrom(config_source_pb2.ConfigSource(ads={}))
    cluster.connect_timeout.FromMilliseconds(10_000)
    return cluster


def static_cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)


def endpoints(cluster: str, *addresses: tuple[str, int]) -> endpoint_pb2.ClusterLoadAssignment:
    lb = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
                )
            )
        )
        for ip, port in addresses
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb)]
    )


def route_config(name: str, routes: dict[str, str]) -> route_pb2.RouteConfiguration:
    """One virtual host per `host -> cluster`, each with a catch-all prefix route."""
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=f"{host}:{name}",
                domains=[host],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    )
                ],
            )
            for host, cluster in sorted(routes.items())
        ],
    )


def service_cluster(host: str, port: int) -> str:
    return f"outbound|{port}||{host}"


def bookinfo(reviews_version: str = "v1", ratings_ips: int = 1) -> dict[str, list]:
    """A tiny Bookinfo-like mesh: listener 9080 → route '9080' → three EDS clusters."""
    hosts = ["productpage", "reviews", "ratings"]
    clusters = [eds_cluster(service_cluster(f"{h}.default.svc.cluster.local", 9080)) for h in hosts]
    routes = {f"{h}.default.svc.cluster.local": service_cluster(f"{h}.default.svc.cluster.local", 9080)
              for h in hosts}
    if reviews_version != "v1":
        routes["reviews.default.svc.cluster.local"] = service_cluster(
            "reviews.default.svc.cluster.local", 9080
        ).replace("||", f"|{reviews_version}|")
        clusters.append(eds_cluster(routes["reviews.default.svc.cluster.local"]))
    eds = [endpoints(c.name, (f"10.0.0.{i + 1}", 9080)) for i, c in enumerate(clusters)]
    ratings = service_cluster("ratings.default.svc.cluster.local", 9080)
    eds = [e for e in eds if e.cluster_name != ratings]
    eds.append(endpoints(ratings, *((f"10.0.1.{i + 1}", 9080) for i in range(ratings_ips))))
    return {
        "lds": [http_listener(9080)],
        "rds": [route_config("9080", routes)],
        "cds": clusters + [static_cluster("BlackHoleCluster")],
        "eds": eds,
    }


def synthetic(n: int) -> dict[str, list]:
    """n services on port 8080, one virtual host and one EDS cluster each."""
    hosts = [f"svc-{i}.ns-{i % 50}.svc.cluster.local" for i in range(n)]
    clusters = [eds_cluster(service_cluster(h, 8080)) for h in hosts]
    return {
        "lds": [http_listener(8080)],
        "rds": [route_config("8080", {h: service_cluster(h, 8080) for h in hosts})],
        "cds": clusters,
        "eds": [endpoints(c.name, (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", 8080))
                for i, c in enumerate(clusters)],
    }
