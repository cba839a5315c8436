"""Run inside a namespace whose only pod address is IPv6: the controller (its gRPC stream over TLS and its
health port, at their defaults `[::]` and `::`) and an agent-style status port (`0.0.0.0`, the agent's default
listen host), each reached on the pod's IPv6 address and on IPv4 loopback. Prints one JSON object.

    python ipv6_only_ports.py POD_ADDRESS PKI_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from amesh_common.backoff import Backoff
from amesh_common.http_server import serve
from controller import kube
from controller.app import Controller, Settings
from controller.kube import KubeConfig
from controller.stream import ServerTls
from sidecar_agent.plugins.client import PluginClient, StreamSecurity
from tests.controller import pki
from tests.controller.fake_api import FakeApi, service_account_review
from tests.controller.objects import ampc, pod, rewrite


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def main(address: str, files: pki.Files) -> dict:
    api = FakeApi()  # the API server stand-in on loopback (a pod's lo keeps 127.0.0.1 in an IPv6-only cluster)
    api.reviews["tok"] = service_account_review("shop", "web-1")
    api.lists[kube.PODS] = ([pod("web-1", {"app": "web"}, "shop")], "p1")
    api.lists[kube.CONFIGS] = ([ampc("headers", [rewrite()], namespace="shop")], "c1")
    out: dict = {}
    agent_status = serve("0.0.0.0", 0, {"/healthz/ready": lambda q: (200, "text/plain", b"ok\n")})
    try:
        settings = Settings(kube=KubeConfig(api.url), schema_dir=sys.argv[3], metrics_port=0, health_port=0,
                            grpc_address="[::]:0", tls=ServerTls(files.cert, files.key),
                            backoff=Backoff(initial=0.02, maximum=0.1))
        out["defaults"] = [Settings.grpc_address, Settings.http_host]
        controller = Controller(settings)
        started = asyncio.Event()
        task = asyncio.create_task(controller.run(started))
        await asyncio.wait_for(started.wait(), 10)
        try:
            for _ in range(100):
                if controller.not_ready() is None:
                    break
                await asyncio.sleep(0.05)
            host = f"[{address}]"
            out["controller_readyz_v6"] = await asyncio.to_thread(get, f"http://{host}:{controller.health_port}/readyz")
            out["controller_readyz_v4"] = await asyncio.to_thread(get, f"http://127.0.0.1:{controller.health_port}/readyz")
            out["agent_ready_v6"] = await asyncio.to_thread(get, f"http://{host}:{agent_status.port}/healthz/ready")
            out["agent_ready_v4"] = await asyncio.to_thread(get, f"http://127.0.0.1:{agent_status.port}/healthz/ready")
            for name, target in (("stream_v6", f"{host}:{controller.grpc_port}"),
                                 ("stream_v4", f"127.0.0.1:{controller.grpc_port}")):
                received = []

                async def on_set(s, received=received):
                    received.append(s)

                client = PluginClient(target, "shop", "web-1", lambda: "tok", on_set, Backoff(0.02, 0.1),
                                      StreamSecurity(ca_file=files.ca, server_name=pki.SERVICE_NAME))
                run = asyncio.create_task(client.run())
                for _ in range(200):
                    if received:
                        break
                    await asyncio.sleep(0.05)
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
                out[name] = [p.name for s in received[:1] for p in s.plugins] or client.last_error
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        agent_status.close()
        api.close()
    return out


if __name__ == "__main__":
    directory = Path(sys.argv[2])
    files = pki.Files(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    print(json.dumps(asyncio.run(main(sys.argv[1], files))), flush=True)
