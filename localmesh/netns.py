"""Network namespaces for the local mesh (pyroute2), and sockets opened inside them.

Layout: `<prefix>-net` holds the bridge `br0` (the node's "network"); every pod, istiod and the outside
host is a namespace `<prefix>-<name>` whose `eth0` is a veth to that bridge. Nothing is added to the
host's own namespace except the short-lived veth pair between creation and the move.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import threading
from pathlib import Path

from pyroute2 import IPRoute, NetNS, netns

CLONE_NEWNET = 0x40000000
NETNS_RUN = Path("/var/run/netns")
NETNS_ETC = Path("/etc/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def exists(name: str) -> bool:
    return (NETNS_RUN / name).exists()


def create(name: str) -> None:
    netns.create(name)
    with NetNS(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def remove(name: str) -> None:
    if exists(name):
        netns.remove(name)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def listed(prefix: str) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix + "-"))


def make_bridge(name: str, address: str, prefixlen: int) -> None:
    with NetNS(name) as ns:
        ns.link("add", ifname="br0", kind="bridge")
        index = ns.link_lookup(ifname="br0")[0]
        ns.addr("add", index=index, address=address, prefixlen=prefixlen)
        ns.link("set", index=index, state="up")


def attach(bridge_ns: str, name: str, address: str, prefixlen: int, gateway: str) -> None:
    """Give namespace `name` an eth0 with `address` on the bridge in `bridge_ns`, default route via `gateway`."""
    tmp = "amm" + secrets.token_hex(4)  # unique in the host namespace for the moment it lives there
    with IPRoute() as host:
        host.link("add", ifname=tmp + "a", kind="veth", peer=tmp + "b")
        host.link("set", index=host.link_lookup(ifname=tmp + "a")[0], net_ns_fd=name, ifname="eth0")
        host.link("set", index=host.link_lookup(ifname=tmp + "b")[0], net_ns_fd=bridge_ns)
    with NetNS(bridge_ns) as ns:
        index = ns.link_lookup(ifname=tmp + "b")[0]
        ns.link("set", index=index, master=ns.link_lookup(ifname="br0")[0], state="up")
    with NetNS(name) as ns:
        index = ns.link_lookup(ifname="eth0")[0]
        ns.addr("add", index=index, address=address, prefixlen=prefixlen)
        ns.link("set", index=index, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=gateway)


def write_etc(name: str, filename: str, text: str) -> None:
    """/etc/netns/<name>/<filename>: `ip netns exec` mounts it over /etc/<filename>."""
    directory = NETNS_ETC / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_text(text)


def inode(name: str) -> int:
    return os.stat(NETNS_RUN / name).st_ino


def pids_in(names: list[str]) -> list[int]:
    """Every process whose network namespace is one of `names` (found through /proc, so it works
    without any record of what was started, e.g. after the mesh's own process was killed)."""
    wanted = {inode(n) for n in names if exists(n)}
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino in wanted:
                out.append(int(entry.name))
        except OSError:
            continue  # gone, or a kernel thread
    return out


def socket_in(name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside namespace `name`. setns(CLONE_NEWNET) switches only the calling thread, and a
    socket keeps the namespace it was created in, so a short-lived thread makes it and hands it back."""
    result: dict = {}

    def make() -> None:
        try:
            fd = os.open(NETNS_RUN / name, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {name} failed")
            finally:
                os.close(fd)
            result["socket"] = socket.socket(family, kind)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["socket"]
