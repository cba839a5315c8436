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
from sidecar_agent.xds import memory

CONFIGS_PATH = "/apisix/admin/configs"
_VERSION_SUFFIX = "_conf_version"


@dataclass(frozen=True)
class Sent:
    """What a PUT carried, kept after the body is gone: its digest and, per type, the conf version and
    a digest of the content (to bump only the types that changed without keeping their text)."""

    digest: str
    versions: Mapping[str, int]  # type -> conf version sent
    sections: Mapping[str, str]  # type -> sha256 of its canonical JSON


@dataclass(frozen=True)
class Encoded:
    body: bytes
    sent: Sent

    # The fields callers read, without reaching into `sent`.
    @property
    def digest(self) -> str:
        return self.sent.digest

    @property
    def versions(self) -> Mapping[str, int]:
        return self.sent.versions


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode(
    document: Mapping[str, Any], previous: Sent | Encoded | None, floor: Mapping[str, int] | None = None
) -> Encoded:
    """The PUT body for `document`, given what was sent before and the versions APISIX holds (pure).

    Each section is serialized once: its text is both hashed (change detection) and spliced into the
    body, which is byte-for-byte the canonical JSON of the document plus its conf versions.
    """
    bad = [k for k in document if k.endswith(_VERSION_SUFFIX)]
    if bad:
        raise ValueError(f"document must not carry conf versions itself: {bad}")
    if isinstance(previous, Encoded):
        previous = previous.sent
    prev_versions = dict(previous.versions) if previous else {}
    prev_sections = dict(previous.sections) if previous else {}
    floor = floor or {}
    versions: dict[str, int] = {}
    sections: dict[str, str] = {}
    pieces: dict[str, str] = {}
    for kind in sorted(set(document) | set(prev_versions)):
        text = _canonical(document.get(kind))
        section = hashlib.sha256(text.encode()).hexdigest()
        held = max(prev_versions.get(kind, 0), floor.get(kind, 0))
        versions[kind] = held if prev_sections.get(kind) == section and held else held + 1
        sections[kind] = section
        if kind in document:
            pieces[kind] = text
        # Every type we ever sent carries its version, also once left out (cleared): without one,
        # APISIX bumps the type's version itself (held + 1, on every PUT), runs ahead of ours, and a
        # later push of the type at a version equal to what it holds is silently ignored.
        pieces[kind + _VERSION_SUFFIX] = str(versions[kind])
    body = ("{" + ",".join(f"{_canonical(k)}:{pieces[k]}" for k in sorted(pieces)) + "}").encode()
    return Encoded(body, Sent(hashlib.sha256(body).hexdigest(), versions, sections))


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
    last: Sent | None = field(default=None, init=False)  # the body itself is not kept

    async def push(self, document: Mapping[str, Any]) -> None:
        floor = None
        # An APISIX that outlived a previous agent may hold higher versions; and a type we never sent
        # has been bumped by APISIX on every PUT that left it out: start above what it holds.
        if self.last is None or any(kind not in self.last.versions for kind in document):
            floor = held_versions(await self._get_config())
        encoded = encode(document, self.last, floor)
        status, text = await asyncio.to_thread(self._request, "PUT", encoded)
        if status == 400 and "conf_version" in text:
            # APISIX holds higher versions than we know of (it was pushed by someone else): resync once.
            encoded = encode(document, self.last, held_versions(await self._get_config()))
            status, text = await asyncio.to_thread(self._request, "PUT", encoded)
        if status not in (200, 202, 204):
            hint = ""
            if "shared dict: no memory" in text:
                hint = (f" (the {len(encoded.body) / 1e6:.1f} MB configuration does not fit APISIX's standalone-config "
                        "shared dict: raise ApisixSettings.config_dict_mb, config.yaml's "
                        "nginx_config.meta.lua_shared_dict, and restart APISIX)")
            raise PushError(f"PUT {CONFIGS_PATH} answered {status}: {text[:500]}{hint}")
        self.last = encoded.sent
        big = len(encoded.body) >= memory.BIG_BYTES
        del encoded  # the body is not kept: digests and versions are all a later push needs
        if big:
            memory.release_free_memory()

    async def holds_last(self) -> bool:
        if self.last is None:
            return True
        try:
            # HEAD first: its X-Digest says it (the agent's hook answers it without decoding the
            # configuration; a GET costs APISIX a decode and an encode of the whole of it and sends it all,
            # 1.5-2.3 s of a worker at 10,000 services, and this runs every few seconds)
            status, _, digest = await asyncio.to_thread(self._get, "HEAD")
            if status == 200 and digest:
                return digest == self.last.digest
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

    def _get(self, method: str = "GET") -> tuple[int, str, str | None]:
        request = urllib.request.Request(
            self.base_url.rstrip("/") + CONFIGS_PATH,
            method=method,
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
