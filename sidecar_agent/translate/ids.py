"""Stable APISIX ids derived from xDS resource names.

APISIX ids match `^[a-zA-Z0-9-_.]+$` and are at most 64 characters; Istio names hold `|`, `:`, `*` and
can be long. An id is a readable slug of the name plus a 12-hex-digit BLAKE2b digest of every part, so
the same names always give the same id and two different names never share one in practice.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

_NOT_ALLOWED = re.compile(r"[^a-zA-Z0-9._-]+")
_MAX = 64
_DIGEST_CHARS = 12


def stable_id(prefix: str, *parts: str) -> str:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=_DIGEST_CHARS // 2).hexdigest()
    readable = _NOT_ALLOWED.sub("_", parts[0].replace(".svc.cluster.local", "")).strip("_") if parts else ""
    room = _MAX - len(prefix) - len(digest) - 2
    return f"{prefix}-{readable[:room]}-{digest}" if readable else f"{prefix}-{digest}"


# Small: each UpstreamRef keeps its own id, so this only spares re-hashing refs made again (a virtual
# host translated anew); sized for the whole mesh it held ~9 MB at 10,000 services.
@lru_cache(maxsize=4096)
def upstream_id(cluster: str, variant: str = "") -> str:
    """Id of the upstream for `cluster`; `variant` names per-route behaviour (retries, hashing…)."""
    return stable_id("u", cluster, variant) if variant else stable_id("u", cluster)


def route_id(route_config: str, virtual_host: str, group: str, index: int, route_name: str) -> str:
    return stable_id("r", route_name or virtual_host, route_config, virtual_host, group, str(index))


def mirror_route_id(cluster: str, upstream_id: str) -> str:
    """The mirror listener's route for an upstream of `cluster` (route.mirror_route)."""
    return stable_id("r", f"mirror|{cluster}", upstream_id)
