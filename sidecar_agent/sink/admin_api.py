"""API-driven standalone: `PUT /apisix/admin/configs` on APISIX's loopback Admin API (APISIX ≥ 3.13).

The contract (apisix-facts.md): `X-API-KEY`; an `X-Digest` header is required and a digest already
loaded answers 204; per type an integer `<type>_conf_version` — higher rebuilds the type, equal keeps
it, lower is a 400; a type left out is cleared. So each type's version is bumped only when that
type's content changed, and versions start above whatever the running APISIX already holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar_agent.sink.base import PushError

CONFIGS_PATH = "/apisix/admin/configs"
_VERSION_SUFFIX = "_conf_version"


@dataclass(frozen=True)
class Encoded:
    body: bytes
    digest: str
    versions: Mapping[str, int]  # type -> conf version sent
    sections: Mapping[str, str]  # type -> canonical JSON of its content, to detect changes


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode(
    document: Mapping[str, Any], previous: Encoded | None, floor: Mapping[str, int] | None = None
) -> Encoded:
    """The PUT body for `document`, given what was sent before and the versions APISIX holds (pure)."""
    bad = [k for k in document if k.endswith(_VERSION_SUFFIX)]
    if bad:
        raise ValueError(f"document must not carry conf versions itself: {bad}")
    prev_versions = dict(previous.versions) if previous else {}
    prev_sections = dict(previous.sections) if previous else {}
    floor = floor or {}
    versions: dict[str, int] = {}
    sections: dict[str, str] = {}
    for kind in sorted(set(document) | set(prev_versions)):
        section = _canonical(document.get(kind))
        held = max(prev_versions.get(kind, 0), floor.get(kind, 0))
        versions[kind] = held if prev_sections.get(kind) == section and held else held + 1
        sections[kind] = section
    payload = dict(document)
    for kind, version in versions.items():
        if kind in document:
            payload[kind + _VERSION_SUFFIX] = version
    body = _canonical(payload).encode()
    return Encoded(body, hashlib.sha256(body).hexdigest(), versions, sections)


def held_versions(config: Mapping[str, Any]) -> dict[str, int]:
    """`<type>_conf_version` values from a GET of /apisix/admin/configs."""
    return {
        k[: -len(_VERSION_SUFFIX)]: int(v)
        for k, v in config.items()
        if k.endswith(_VERSION_SUFFIX) and isinstance(v, int)
    }


@dataclass
class AdminApiSink:
    base_url: str  # e.g. http://127.0.0.1:9180
    api_key: str
    timeout: float = 5.0
    last: Encoded | None = field(default=None, init=False)

    async def push(self, document: Mapping[str, Any]) -> None:
        floor = None
        if self.last is None:  # an APISIX that outlived a previous agent may hold higher versions
            floor = held_versions(await self._get_config())
        encoded = encode(document, self.last, floor)
        status, text = await asyncio.to_thread(self._request, "PUT", encoded)
        if status == 400 and "conf_version" in text:
            # APISIX holds higher versions than we know of (it was pushed by someone else): resync once.
            encoded = encode(document, self.last, held_versions(await self._get_config()))
            status, text = await asyncio.to_thread(self._request, "PUT", encoded)
        if status not in (200, 202, 204):
            raise PushError(f"PUT {CONFIGS_PATH} answered {status}: {text[:500]}")
        self.last = encoded

    async def holds_last(self) -> bool:
        if self.last is None:
            return True
        try:
            status, text, digest = await asyncio.to_thread(self._get)
        except PushError:
            return True  # unreachable: nothing to learn now, pushing would fail anyway
        if status != 200:
            return True
        if digest:
            return digest == self.last.digest
        try:
            held = held_versions(json.loads(text))
        except ValueError:
            return False
        return all(held.get(k, 0) >= v for k, v in self.last.versions.items())

    async def _get_config(self) -> dict[str, Any]:
        status, text, _ = await asyncio.to_thread(self._get)
        if status == 404:
            return {}
        if status != 200:
            raise PushError(f"GET {CONFIGS_PATH} answered {status}: {text[:500]}")
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise PushError(f"GET {CONFIGS_PATH}: not JSON: {exc}") from exc

    def _request(self, method: str, encoded: Encoded) -> tuple[int, str]:
        request = urllib.request.Request(
            self.base_url.rstrip("/") + CONFIGS_PATH,
            data=encoded.body,
            method=method,
            headers={
                "X-API-KEY": self.api_key,
                "X-Digest": encoded.digest,
                "Content-Type": "application/json",
            },
        )
        status, text, _ = self._send(request)
        return status, text

    def _get(self) -> tuple[int, str, str | None]:
        request = urllib.request.Request(
            self.base_url.rstrip("/") + CONFIGS_PATH,
            method="GET",
            headers={"X-API-KEY": self.api_key, "Accept": "application/json"},
        )
        return self._send(request)

    def _send(self, request: urllib.request.Request) -> tuple[int, str, str | None]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return answer.status, answer.read().decode(errors="replace"), answer.headers.get("X-Digest")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace"), exc.headers.get("X-Digest")
        except (urllib.error.URLError, OSError) as exc:
            raise PushError(f"{request.get_method()} {request.full_url}: {exc}") from exc
