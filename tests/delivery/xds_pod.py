"""istiod's stand-in for test_docker.py's proxy test: the project's ADS server (amesh_testing.ads_server)
serving what istiod would push for one HTTP Service, made by amesh_testing.istiogen.

    python -m tests.delivery.xds_pod PORT CLUSTER_IP SERVICE_PORT ENDPOINT_IP

Run from the repo's venv inside the pod's network namespace (nsenter -n), so it listens on the pod's
127.0.0.1:PORT. Service `echo` (default namespace) has CLUSTER_IP and port SERVICE_PORT (HTTP), one endpoint
ENDPOINT_IP:SERVICE_PORT, a pod without a sidecar (tlsMode disabled). Prints `serving PORT` once listening,
then `acked TYPE VERSION` as the agent ACKs each type; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from amesh_testing import istiogen
from amesh_testing.ads_server import AdsServer


def snapshot(cluster_ip: str, port: int, endpoint_ip: str) -> dict:
    mesh = istiogen.Mesh(
        services=(istiogen.Service("echo", cluster_ip, ports=(istiogen.ServicePort(port),)),),
        workloads=(istiogen.Workload("echo", "v1", (endpoint_ip,), tls_mode="disabled"),),
    )
    xds = istiogen.generate(mesh)
    return {"cds": xds.clusters, "eds": xds.endpoints, "lds": xds.listeners, "rds": xds.route_configs}


async def main(port: int, cluster_ip: str, service_port: int, endpoint_ip: str) -> None:
    server = AdsServer()
    server.set_snapshot("1", snapshot(cluster_ip, service_port, endpoint_ip))
    bound = await server.start(port)
    print(f"serving {bound}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pending = {"cds", "eds", "lds", "rds"}
    reported = 0
    while not stop.is_set():
        for short in sorted(pending):
            if server.acked(short, "1"):
                print(f"acked {short} 1", flush=True)
                pending.discard(short)
        nacks = [r for r in server.requests if r.HasField("error_detail")]
        for nack in nacks[reported:]:
            print(f"nack {nack.type_url} {nack.error_detail.message}", flush=True)
        reported = len(nacks)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
