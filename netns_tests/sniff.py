"""Packet-level witness run inside a namespace: prints one JSON line per TCP SYN seen on an interface.

    sniff.py IFACE   -> {"ready": IFACE} once capturing, then {"src", "dst", "sport", "dport"} per SYN.
Test-only: scapy is never imported by program code.
"""

from __future__ import annotations

import json
import sys

from scapy.all import IP, IPv6, TCP, AsyncSniffer  # noqa: E402 - heavy import, only in this helper


def report(packet) -> None:
    layer = packet[IP] if IP in packet else packet[IPv6]
    tcp = packet[TCP]
    print(json.dumps({"src": layer.src, "dst": layer.dst, "sport": tcp.sport, "dport": tcp.dport}), flush=True)


def is_syn(packet) -> bool:
    return TCP in packet and (packet[TCP].flags & 0x12) == 0x02  # SYN without ACK


def main() -> int:
    iface = sys.argv[1]
    sniffer = AsyncSniffer(iface=iface, store=False, lfilter=is_syn, prn=report,
                           started_callback=lambda: print(json.dumps({"ready": iface}), flush=True))
    sniffer.start()
    sniffer.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
