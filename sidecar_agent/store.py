"""Immutable snapshots of the raw xDS the agent holds: per type, the accepted version and resources by name.

A resource is held as the bytes istiod sent, compressed, not as a decoded message: a decoded upb
message takes 5-7x its wire size, and the bytes are all that `/config_dump` (which re-packs them) and
change detection (a digest of them) need. Resources of one type look alike, so each is zlib-compressed
against a dictionary sampled from the first response of its type (`Codec.sampling_many`): 10,000
services' 81 MB on the wire are held in ~6.5 MB. The translator gets decoded messages only for what changed.

A snapshot is replaced whole (`replace` returns a new one; unchanged types and resources are shared),
so readers — the pipeline, /config_dump — never see a half-applied response.
"""

from __future__ import annotations

import functools
import hashlib
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from sidecar_agent.xds import kinds, references

_EMPTY: Mapping[str, "Resource"] = MappingProxyType({})
_DICTIONARY_BYTES = 32 * 1024  # zlib's window: a longer dictionary is not used
_SAMPLE_BYTES = 4 * 1024  # measured: as small as 4 KB spread over a response, as good as 32 KB, 3x faster


def digest_of(value: bytes) -> bytes:
    """What identifies a resource's content (128-bit BLAKE2b of its wire bytes)."""
    return hashlib.blake2b(value, digest_size=16).digest()


@dataclass(frozen=True, eq=False)
class Codec:
    """zlib with a preset dictionary (a sample resource of the same type): fast level, big ratio."""

    dictionary: bytes = b""

    def shrink(self, value: bytes) -> bytes:
        packer = zlib.compressobj(1, zdict=self.dictionary) if self.dictionary else zlib.compressobj(1)
        return packer.compress(value) + packer.flush()

    def expand(self, packed: bytes) -> bytes:
        unpacker = zlib.decompressobj(zdict=self.dictionary) if self.dictionary else zlib.decompressobj()
        return unpacker.decompress(packed) + unpacker.flush()

    @classmethod
    def sampling(cls, sample: bytes) -> Codec:
        return cls(sample[-_DICTIONARY_BYTES:])

    @classmethod
    def sampling_many(cls, values: Sequence[bytes]) -> Codec:
        """A dictionary of whole resources spread over `values` (a response), up to _SAMPLE_BYTES. One
        resource alone can be a poor sample (the first cluster is often the tiny BlackHoleCluster: CDS
        at 10,000 services held 18.6 MB compressed against it, 2.4 MB against this), and a short
        dictionary is cheaper to load into each compressor than zlib's whole 32 KB window."""
        step = max(1, len(values) // 64)
        sample = b""
        for value in values[::step]:
            if sample and len(sample) + len(value) > _SAMPLE_BYTES:
                break
            sample += value
        return cls(sample[-_SAMPLE_BYTES:])


PLAIN = Codec()


@dataclass(frozen=True, slots=True, eq=False)
class Resource:
    """One resource as received: its name, a digest of its bytes, the bytes compressed, and the RDS
    names (listener) or EDS names (cluster) it references, worked out once when it was decoded."""

    name: str
    digest: bytes
    packed: bytes
    codec: Codec
    refs: tuple[str, ...] = ()

    @property
    def value(self) -> bytes:
        """The wire bytes, as istiod sent them."""
        return self.codec.expand(self.packed)

    def message(self, kind: kinds.Kind) -> Message:
        return kinds.parse(kind, self.value)


@dataclass(frozen=True)
class TypeState:
    version: str = ""
    items: Mapping[str, Resource] = field(default_factory=lambda: _EMPTY)

    @functools.cached_property
    def by_digest(self) -> Mapping[bytes, Resource]:
        """Resources by digest: an unchanged resource in a new response is recognised without decoding."""
        return {r.digest: r for r in self.items.values()}

    @functools.cached_property
    def referenced(self) -> frozenset[str]:
        return frozenset(ref for r in self.items.values() for ref in r.refs)


@dataclass(frozen=True)
class Missing:
    """Names referenced but not (yet) held: routes named by listeners, endpoints named by clusters."""

    routes: frozenset[str]
    endpoints: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.routes or self.endpoints)


@dataclass(frozen=True)
class Snapshot:
    types: Mapping[str, TypeState] = field(default_factory=lambda: MappingProxyType({}))

    def state(self, kind: kinds.Kind) -> TypeState:
        return self.types.get(kind.type_url) or _NOTHING

    def version(self, kind: kinds.Kind) -> str:
        return self.state(kind).version

    def items(self, kind: kinds.Kind) -> Mapping[str, Resource]:
        return self.state(kind).items

    def has_received(self, kind: kinds.Kind) -> bool:
        return kind.type_url in self.types

    def replace(self, kind: kinds.Kind, version: str, items: Mapping[str, Resource]) -> Snapshot:
        types = dict(self.types)
        types[kind.type_url] = TypeState(version, MappingProxyType(dict(items)))
        return Snapshot(MappingProxyType(types))

    def route_names(self) -> frozenset[str]:
        return self.state(kinds.LDS).referenced

    def endpoint_names(self) -> frozenset[str]:
        return self.state(kinds.CDS).referenced

    def missing(self) -> Missing:
        return Missing(
            routes=self.route_names() - self.items(kinds.RDS).keys(),
            endpoints=self.endpoint_names() - self.items(kinds.EDS).keys(),
        )

    def complete(self) -> bool:
        """Both wildcard types received and every RDS/EDS name they reference present."""
        return (
            self.has_received(kinds.LDS)
            and self.has_received(kinds.CDS)
            and not self.missing()
        )

    def versions(self) -> dict[str, str]:
        return {k.short: self.version(k) for k in kinds.ORDER if self.has_received(k)}


_NOTHING = TypeState()
EMPTY = Snapshot()


def resource_of(kind: kinds.Kind, value: bytes, message: Message, codec: Codec = PLAIN,
                digest: bytes | None = None) -> Resource:
    """The held form of a freshly decoded resource (pure)."""
    if kind is kinds.LDS:
        refs = tuple(sorted(references.route_names([message])))
    elif kind is kinds.CDS:
        refs = tuple(sorted(references.endpoint_names([message])))
    else:
        refs = ()
    # The name interned: the translator interns the same names (cluster, EDS), so both hold one str.
    return Resource(sys.intern(kind.name_of(message)), digest or digest_of(value), codec.shrink(value), codec, refs)


def snapshot_of(resources: Mapping[kinds.Kind, list[Message]], version: str = "1") -> Snapshot:
    """A snapshot holding `resources` (for tests and tools that start from messages)."""
    snapshot = EMPTY
    for kind, messages in resources.items():
        items = {}
        for message in messages:
            resource = resource_of(kind, message.SerializeToString(), message)
            items[resource.name] = resource
        snapshot = snapshot.replace(kind, version, items)
    return snapshot
