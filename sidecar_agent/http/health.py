"""`/healthz/ready` (Istio's status port 15021): ready only once a complete configuration is live."""

from __future__ import annotations

from collections.abc import Callable


def ready_handler(is_ready: Callable[[], str | None]):
    """`is_ready` returns None when ready, else the reason it is not (shown to the prober)."""

    def handle(query: str) -> tuple[int, str, bytes]:
        reason = is_ready()
        if reason is None:
            return 200, "text/plain", b""
        return 503, "text/plain", (reason + "\n").encode()

    return handle
