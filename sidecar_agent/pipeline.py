"""From accepted xDS snapshots to APISIX documents, incrementally: decide ACK/NACK, gate, publish.

One `Translator` (sidecar_agent.translate) lives as long as the agent and always holds the translation
of exactly one snapshot, `held`. For each response:

- `decide` diffs the candidate snapshot against `held` by name and bytes (`changes`: state-of-the-world
  responses carry whole sets, but the session reuses the held `Resource` for unchanged bytes, so the
  diff is an identity check) and feeds the translator only what changed: one RDS update recomputes
  that route configuration, one EDS update the upstreams of the clusters reading it.
- If any of it raises `TranslationError` (or the document fails the gate: an upstream reference that
  does not resolve, a duplicate id, or — with `check` — APISIX's schemas), every change already applied
  is undone from the held bytes, so the translator is back at `held`, and the error becomes the NACK's
  error_detail: the last good configuration stays in force. Assembly errors (`document()`) are found when
  the snapshot becomes complete, and so NACK the response that completed it.
- `on_accepted` publishes only a complete snapshot (every RDS named by LDS and every EDS named by CDS
  present). If a snapshot stays incomplete for `partial_timeout` seconds, the translator's document of
  it is published as the partial policy: Envoy's initial_fetch_timeout, since a cluster without its
  ClusterLoadAssignment translates to an upstream without nodes (503) and a listener without its
  RouteConfiguration to no routes (404) — nothing ever names a missing upstream. Readiness requires a
  complete document.

The controller's plugin set (`on_plugins`, from amesh-controller's stream) is laid over every document
before the gate (`plugins.overlay.Overlay`, memoised by identity), so what is gated, schema-checked and
pushed is the merged document. A new set re-merges the document in force (and the held one) without
translating anything again; a set the gate or the schemas refuse is not adopted, the previous one stays,
and the refusal is kept for /plugins. xDS responses are checked merged with the set in force.

The documents are the translator's shared, read-only objects: nothing here copies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress, count, islice
from operator import is_not
from typing import Any, Protocol

from google.protobuf.message import Message

from sidecar_agent.http.metrics import AgentMetrics
from amesh_common.plugin_model import EMPTY as NO_PLUGINS, PluginSet
from sidecar_agent.plugins.overlay import Overlay
from sidecar_agent.sink.pusher import Document, Pusher
from sidecar_agent.store import EMPTY, Resource, Snapshot
from sidecar_agent.translate.index import SmallSets, among
from sidecar_agent.xds import kinds
from sidecar_agent.xds.protocol import Decoded, Pending

log = logging.getLogger(__name__)


class Translator(Protocol):
    """The incremental translator's API (sidecar_agent.translate.Translator)."""

    def set_cluster(self, cluster: Message) -> Any: ...
    def remove_cluster(self, name: str) -> Any: ...
    def set_endpoints(self, cla: Message) -> Any: ...
    def remove_endpoints(self, name: str) -> Any: ...
    def set_listener(self, listener: Message) -> Any: ...
    def remove_listener(self, name: str) -> Any: ...
    def set_route_config(self, rc: Message, wire: bytes | None = None) -> Any: ...
    def remove_route_config(self, name: str) -> Any: ...
    def document(self) -> Mapping[str, Any]: ...
    def report(self) -> Any: ...


# Problems of a whole document (e.g. APISIX's schemas refusing an object); empty when acceptable.
Check = Callable[[Mapping[str, Any]], list[str]]

_METHODS = {
    kinds.CDS: ("set_cluster", "remove_cluster"),
    kinds.EDS: ("set_endpoints", "remove_endpoints"),
    kinds.LDS: ("set_listener", "remove_listener"),
    kinds.RDS: ("set_route_config", "remove_route_config"),
}


# A response changing this many resources (a first sync, a mesh-wide EDS push) is applied inside the
# translator's `bulk()` (the cyclic garbage collector paused: translation allocates hundreds of thousands
# of acyclic containers, which it would otherwise re-scan over and over). Once it is accepted, what the
# translator holds is moved out of the collector's sight (`gc.freeze`): later collections skip it instead
# of walking ~1.5 million objects (10,000 services) each time; nothing in it forms cycles.
BULK_CHANGES = 256


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def settle_heap() -> float:
    """Collect what cycles are garbage, then freeze the survivors (the translation just accepted) into
    the permanent generation; the previous freeze is undone first so its garbage is found too. Seconds taken."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


class Refused(ValueError):
    """The document the candidate translates to must not be pushed (the message says why)."""


@dataclass(frozen=True)
class Change:
    kind: kinds.Kind
    name: str
    before: Resource | None  # None: added
    after: Resource | None  # None: removed


def changes(held: Snapshot, target: Snapshot) -> list[Change]:
    """What turns `held` into `target`, per resource, in ADS order (CDS, EDS, LDS, RDS) (pure)."""
    out = []
    for kind in kinds.ORDER:
        old, new = held.items(kind), target.items(kind)
        if old is new:
            continue
        for name, after in new.items():
            before = old.get(name)
            if before is not after and (before is None or before.digest != after.digest):
                out.append(Change(kind, name, before, after))
        out.extend(Change(kind, name, old[name], None) for name in old.keys() - new.keys())
    return out


def _upstream_refs(obj: Mapping[str, Any]) -> list[Any]:
    refs = [obj["upstream_id"]] if "upstream_id" in obj else []
    plugins = obj.get("plugins")
    split = plugins.get("traffic-split") if plugins else None
    for rule in split.get("rules", ()) if split else ():
        refs += [entry["upstream_id"] for entry in rule.get("weighted_upstreams", ()) if "upstream_id" in entry]
    return refs


def inconsistencies(document: Mapping[str, Any]) -> list[str]:
    """Duplicate ids, and references to upstreams the document does not hold (pure; APISIX would
    route such a request nowhere, so such a document is never pushed). A few ms at 1,000 services."""
    problems = []
    ids_by_type: dict[str, set] = {}
    for key, objects in document.items():
        seen = {obj.get("id") for obj in objects}
        if len(seen) != len(objects):
            counts: dict[Any, int] = {}
            for obj in objects:
                counts[obj.get("id")] = counts.get(obj.get("id"), 0) + 1
            problems += [f"{key}/{oid}: duplicate id" for oid, n in counts.items() if n > 1]
        ids_by_type[key] = seen
    upstreams = ids_by_type.get("upstreams", set())
    for key in ("routes", "services", "stream_routes"):
        for obj in document.get(key, ()):
            problems += [f"{key}/{obj.get('id')}: upstream {ref!r} does not exist"
                         for ref in _upstream_refs(obj) if ref not in upstreams]
    return problems


class Gate:
    """`inconsistencies`, paid only for what changed. Each list of the document is diffed against the
    last accepted one by object identity (the translator hands back the very same object for anything
    it did not recompute; documents are read-only): only the objects that came or went are read in
    Python (their ids against the ids held: duplicates; their upstream references against the upstreams
    held), and the held objects naming an upstream that went away (from an index by upstream id). The
    rest is C-level passes over the lists (`map(id, …)`, set differences, `compress`): one changed route
    at 1,000 services costs its own check, not Python passes over 9,000 objects (benchmarks/agent.py
    "one route change"). What it holds, ~1.5 MB at 1,000 services: a copy of each list (which keeps
    the objects, so their id()s are not reused), the set of their id()s and of their "id" values, and
    the index of the objects naming each upstream."""

    def __init__(self) -> None:
        self._lists: dict[str, _Held] = {}  # the last accepted document's lists, by type
        self._users = SmallSets()  # upstream id -> id()s of the held objects naming it

    def __call__(self, document: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        diffs: dict[str, _Diff] = {}
        for key in self._lists.keys() | document.keys():
            objects = document.get(key, ())
            diff = diffs[key] = _Diff(objects, self._lists.get(key) or _Held())
            if diff.duplicates():
                problems += [p for p in inconsistencies({key: objects}) if p.endswith("duplicate id")]
        upstreams = diffs.get("upstreams") or _Diff((), _Held())
        named_gone: set[int] = set()
        for oid in upstreams.removed_ids:
            if not upstreams.holds(oid):
                named_gone.update(self._users.get(oid, ()))
        for key in _REF_KEYS:
            diff = diffs.get(key)
            if diff is None:
                continue
            check = list(diff.added)
            if named_gone:  # held objects still in the list that name an upstream gone
                check += among(diff.objects, named_gone)
            check.sort(key=_id_text)  # problems in id order, whatever the set order
            for obj in check:
                problems += [f"{key}/{obj.get('id')}: upstream {ref!r} does not exist"
                             for ref in _upstream_refs(obj) if not upstreams.holds(ref)]
        if not problems:
            self._commit(diffs)
        return problems

    def _commit(self, diffs: dict[str, "_Diff"]) -> None:
        users = self._users
        for key, diff in diffs.items():
            held = diff.held
            held.objects = list(diff.objects)  # a copy: the translator patches its lists in place
            held.order, held.idents = diff.order, diff.now
            held.ids.difference_update(diff.removed_ids)
            held.ids.update(diff.added_ids)
            if held.objects:
                self._lists[key] = held
            else:
                self._lists.pop(key, None)
            if key not in _REF_KEYS:
                continue
            for obj in diff.removed:  # read-only: it names what it named when it came
                for upstream_id in _upstream_refs(obj):
                    users.discard(upstream_id, id(obj))
            for obj in diff.added:
                for upstream_id in _upstream_refs(obj):  # a split may name one twice: kept once
                    users.add(upstream_id, id(obj))


_REF_KEYS = ("routes", "services", "stream_routes")
_FEW_MOVED = 64  # beyond, the set differences are as cheap


class _Held:
    """One list of the last accepted document: a copy of it, the set of its objects' id()s and the set
    of their "id" values."""

    def __init__(self) -> None:
        self.objects: list = []
        self.order: list[int] = []  # their id()s, in order
        self.idents: set[int] = set()
        self.ids: set = set()


class _Diff:
    """One list of a document against the one held, by object identity. The translator patches its
    lists in place, so a route change mostly leaves a list's length and order as they were: the objects
    that came and went are then found by position (`is not`, a C pass, no hashing) and the set of id()s
    patched; otherwise by set differences of id()s, taken once per list and kept in order (6,000 upstreams
    at 1,000 services, one route change: 1.6 -> 0.4 ms; benchmarks/agent.py "one route change")."""

    def __init__(self, objects, held: _Held) -> None:
        self.held = held
        self.objects = objects
        if not self._in_place(objects, held):
            self.order = list(map(id, objects))
            self.now = set(self.order)
            came, gone = self.now - held.idents, held.idents - self.now
            self.added = list(among(objects, came, self.order)) if came else []
            self.removed = list(among(held.objects, gone, held.order)) if gone else []
        self.removed_ids = {obj.get("id") for obj in self.removed}
        self.added_ids = [obj.get("id") for obj in self.added]
        self._added_set = set(self.added_ids)

    def _in_place(self, objects, held: _Held) -> bool:
        """The same length and at most _FEW_MOVED positions holding another object: those positions'
        objects came and went (an object moved shows as both, which checks it again and changes nothing)."""
        before = held.objects
        if len(objects) != len(before):
            return False
        where = list(islice(compress(count(), map(is_not, objects, before)), _FEW_MOVED + 1))
        if len(where) > _FEW_MOVED:
            return False
        self.added = [objects[i] for i in where]
        self.removed = [before[i] for i in where]
        self.order = held.order.copy()
        for i in where:
            self.order[i] = id(objects[i])
        self.now = held.idents.difference(map(id, self.removed))
        self.now.update(map(id, self.added))  # an added object held elsewhere too: fewer ids, a duplicate
        return True

    def holds(self, oid) -> bool:
        """Does the list now hold an object with this id."""
        return oid in self._added_set or (oid in self.held.ids and oid not in self.removed_ids)

    def duplicates(self) -> bool:
        return len(self.now) != len(self.objects) or len(self._added_set) != len(self.added_ids) or any(
            oid in self.held.ids and oid not in self.removed_ids for oid in self._added_set)


def _id_text(obj: Mapping[str, Any]) -> str:
    return str(obj.get("id"))


def label_of(snapshot: Snapshot) -> str:
    return ",".join(f"{k}={v}" for k, v in snapshot.versions().items())


def _default_translator() -> Translator:
    from sidecar_agent.translate import Translator as Real

    return Real()


def _default_invalid() -> tuple[type[Exception], ...]:
    from sidecar_agent.translate import TranslationError

    return (TranslationError,)


@dataclass(eq=False)
class Pipeline:
    pusher: Pusher
    metrics: AgentMetrics
    new_translator: Callable[[], Translator] = _default_translator
    invalid: tuple[type[Exception], ...] = field(default_factory=_default_invalid)
    check: Check | None = None
    partial_timeout: float = 10.0
    # The unsupported-fields gauge is refreshed at most this often, off the push path: the report walks
    # every cached resource (~150 ms at 10,000 services), too much to redo on each EDS update.
    report_delay: float = 5.0
    snapshot: Snapshot | None = field(default=None, init=False)  # last accepted, for /config_dump
    document: Document | None = field(default=None, init=False)  # last submitted (plugins merged)
    source: Document | None = field(default=None, init=False)  # the same, as translated (no plugins)
    held: Snapshot = field(default=EMPTY, init=False)  # what the translator holds
    plugins: PluginSet = field(default=NO_PLUGINS, init=False)  # the controller's set in force
    plugins_refused: str | None = field(default=None, init=False)  # why the last set received was not adopted
    _body: Mapping[str, Any] | None = field(default=None, init=False)  # its document, once assembled
    _merged: Mapping[str, Any] | None = field(default=None, init=False)  # _body with `plugins`, gated
    _partial: asyncio.TimerHandle | None = field(default=None, init=False)
    _report: asyncio.TimerHandle | None = field(default=None, init=False)
    _settle: bool = field(default=False, init=False)  # a bulk change was applied: settle_heap() once accepted

    def __post_init__(self) -> None:
        self.translator = self.new_translator()
        self._gate = Gate()
        self._overlay = Overlay()

    # -- the client's two callbacks ------------------------------------------------------------
    async def decide(self, pending: Pending) -> str | None:
        started = time.perf_counter()
        try:
            self._advance(pending.snapshot, pending.kind, pending.decoded)
        except (*self.invalid, Refused) as exc:
            return f"{pending.kind.short} version {pending.version!r} rejected: {exc}"
        self.metrics.translation.observe(time.perf_counter() - started)
        return None

    async def on_accepted(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        if snapshot is not self.held:  # accepted without a decide (not the client's way): catch up
            try:
                self._advance(snapshot, None, {})
            except (*self.invalid, Refused):
                log.exception("accepted snapshot %s does not translate", label_of(snapshot))
                return
        self._schedule_report()
        if self._settle:  # after this callback: the push goes out first
            self._settle = False
            asyncio.get_running_loop().call_soon(self._settle_heap)
        if snapshot.complete():
            if self._partial is not None:
                self._partial.cancel()
                self._partial = None
            self._submit(self._body, self._merged, label_of(snapshot))
        elif self._partial is None and snapshot.has_received(kinds.LDS) and snapshot.has_received(kinds.CDS):
            self._partial = asyncio.get_running_loop().call_later(self.partial_timeout, self._publish_partial)

    # -- applying a snapshot to the translator, all or nothing ----------------------------------
    def _advance(self, target: Snapshot, kind: kinds.Kind | None, decoded: Mapping[str, Decoded]) -> None:
        applied: list[Change] = []
        todo = changes(self.held, target)
        try:
            bulk = len(todo) >= BULK_CHANGES
            with self._bulk() if bulk else contextlib.nullcontext():
                for change in todo:
                    fresh = decoded.get(change.name) if change.kind is kind else None
                    applied.append(change)  # first: a setter that fails halfway is undone too
                    self._apply(change.kind, change.name, change.after, fresh)
                if not target.complete():
                    body = merged = None
                elif not todo and self._body is not None:
                    body, merged = self._body, self._merged  # same content under new versions (a resend)
                else:
                    body, merged = self._assemble()
        except BaseException:
            self._undo(applied)
            raise
        self.held, self._body, self._merged = target, body, merged
        if bulk:
            self._settle = True

    def _bulk(self) -> contextlib.AbstractContextManager:
        bulk = getattr(self.translator, "bulk", None)
        return bulk() if bulk is not None else _collector_paused()

    def _settle_heap(self) -> None:
        log.debug("heap settled after a bulk change in %.0f ms", settle_heap() * 1000)

    def _assemble(self) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """The translator's document and, gated, that document with the plugin set in force."""
        body = self.translator.document()
        return body, self._checked(body, self.plugins)

    def _checked(self, body: Mapping[str, Any], plugin_set: PluginSet) -> Mapping[str, Any]:
        merged = self._overlay(body, plugin_set)
        problems = self._gate(merged)
        if not problems and self.check is not None:
            problems = self.check(merged)
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise Refused("; ".join(problems[:5]) + more)
        return merged

    def _apply(self, kind: kinds.Kind, name: str, resource: Resource | None, fresh: Decoded | None) -> None:
        setter, remover = _METHODS[kind]
        if resource is None:
            getattr(self.translator, remover)(name)
            return
        if fresh is None:
            wire = resource.value
            fresh = Decoded(kinds.parse(kind, wire), wire)
        if kind is kinds.RDS:  # the one setter that reads the bytes too (the changed virtual hosts)
            self.translator.set_route_config(fresh.message, fresh.wire)
        else:
            getattr(self.translator, setter)(fresh.message)

    def _undo(self, applied: list[Change]) -> None:
        try:
            for change in reversed(applied):
                self._apply(change.kind, change.name, change.before, None)
        except Exception:
            # The held resources translated before; if putting them back fails anyway, start over.
            log.exception("rolling the translator back failed; rebuilding it from the held snapshot")
            self.translator = self.new_translator()
            for change in changes(EMPTY, self.held):
                self._apply(change.kind, change.name, change.after, None)

    # -- publishing ----------------------------------------------------------------------------
    def _publish_partial(self) -> None:
        self._partial = None
        snapshot = self.snapshot
        if snapshot is None or snapshot.complete() or snapshot is not self.held:
            return
        missing = snapshot.missing()
        log.warning("still missing after %.0fs: routes %s, endpoints %s; publishing the partial policy",
                    self.partial_timeout, sorted(missing.routes), sorted(missing.endpoints))
        try:
            body, merged = self._assemble()
        except (*self.invalid, Refused):
            log.exception("the partial document does not assemble")
            return
        self._submit(body, merged, "partial:" + label_of(snapshot), complete=False)

    def _submit(self, body: Mapping[str, Any], merged: Mapping[str, Any], label: str, complete: bool = True) -> None:
        self.source = Document(body, label, complete)
        suffix = f";plugins={self.plugins.version}" if self.plugins.version else ""
        self.document = Document(merged, label + suffix, complete)
        self.pusher.submit(self.document)

    # -- the controller's plugin set -----------------------------------------------------------
    async def on_plugins(self, plugin_set: PluginSet) -> str | None:
        """Adopt the controller's new set and push the document in force merged with it; None when
        adopted, else why not (the previous set stays). Nothing is translated again."""
        if plugin_set == self.plugins:
            self.metrics.plugin_sets.labels("unchanged").inc()
            return None
        source = self.source
        try:
            merged = self._checked(self._body, plugin_set) if self._body is not None else None
            again = None
            if source is not None:
                again = merged if source.body is self._body else self._checked(source.body, plugin_set)
        except Refused as exc:
            self.plugins_refused = f"plugin set {plugin_set.version!r} refused: {exc}"
            log.warning("%s; keeping set %r", self.plugins_refused, self.plugins.version)
            self.metrics.plugin_sets.labels("refused").inc()
            return self.plugins_refused
        self.plugins, self.plugins_refused = plugin_set, None
        if merged is not None:
            self._merged = merged
        self.metrics.plugin_sets.labels("applied").inc()
        self.metrics.plugins_active.set(len(plugin_set.plugins))
        if source is not None and again is not None:
            self._submit(source.body, again, source.label, source.complete)
        return None

    def _schedule_report(self) -> None:
        if self._report is None:
            self._report = asyncio.get_running_loop().call_later(self.report_delay, self._update_report)

    def _update_report(self) -> None:
        self._report = None
        try:
            report = self.translator.report()
            self.metrics.unsupported.set(report.by_effect())
            self.denied = report.denied()  # the admin /status shows them
        except Exception:  # a metric must never take the agent down
            log.exception("translation report failed")
