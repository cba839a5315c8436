"""Coalescing, retrying delivery of documents to a sink.

`submit` never blocks the xDS stream: it replaces the one pending document, so a burst of pushes
from istiod becomes a single write of the newest. One task delivers, retrying with backoff; it
also re-pushes the live document when the sink says APISIX lost it (APISIX restarted empty).
A document whose body is the very object already live (istiod resent the same resources under new
versions, e.g. after a reconnect) is not pushed again: it only becomes the live label.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sidecar_agent.sink.base import PushError, Sink
from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    body: Mapping[str, Any]
    label: str  # which xDS versions it was built from, for logs and /config_dump
    complete: bool = True  # False for the partial policy's document (not enough to be ready)
    submitted: float = field(default_factory=time.perf_counter)


class PushObserver(Protocol):
    def pushed(self, document: Document, seconds: float) -> None: ...
    def failed(self, document: Document, error: str) -> None: ...


class _Quiet:
    def pushed(self, document: Document, seconds: float) -> None:
        pass

    def failed(self, document: Document, error: str) -> None:
        pass


@dataclass(eq=False)
class Pusher:
    sink: Sink
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, maximum=10.0))
    recheck_seconds: float = 5.0
    observer: PushObserver = field(default_factory=_Quiet)
    rng: random.Random = field(default_factory=random.Random)
    # Called with each document before it is queued: the agent regenerates APISIX's config.yaml there when
    # the document needs listeners APISIX does not have yet (the data path's internal HTTP ports).
    before_submit: Callable[[Document], None] = lambda document: None
    live: Document | None = field(default=None, init=False)
    ever_complete: bool = field(default=False, init=False)  # a complete document has been live
    complete_at: float | None = field(default=None, init=False)  # monotonic time the first complete one was delivered
    pushes: int = field(default=0, init=False)
    _pending: Document | None = field(default=None, init=False)
    _force: bool = field(default=False, init=False)  # push even if the body is the live one
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition, init=False)

    def submit(self, document: Document) -> None:
        self.before_submit(document)
        self._pending = document  # a newer document supersedes one not yet delivered
        self._wake.set()

    def resend(self) -> None:
        """APISIX restarted (the supervisor saw it): push the live document again."""
        if self._pending is None and self.live is not None:
            self._pending = self.live
        self._force = True
        self._wake.set()

    async def wait_live(self, label: str, timeout: float) -> Document:
        """Wait until the document with `label` is live (for tests and the benchmark)."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.live is not None and self.live.label == label),
                timeout,
            )
            return self.live

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                # not asyncio.wait_for: on 3.11 it can swallow a cancel that lands as the wait ends,
                # and the task then never stops (seen: an agent test's teardown hung for good)
                async with asyncio.timeout(self.recheck_seconds):
                    await self._wake.wait()
            except TimeoutError:
                if self.live is not None and self._pending is None and not await self.sink.holds_last():
                    log.warning("APISIX no longer holds document %s: pushing it again", self.live.label)
                    self._pending, self._force = self.live, True
            self._wake.clear()
            document, self._pending = self._pending, None
            force, self._force = self._force, False
            if document is None:
                continue
            live = self.live
            if not force and live is not None and document.body is live.body and document.complete == live.complete:
                async with self._changed:
                    self.live = document
                    self._changed.notify_all()
                continue
            started = time.perf_counter()
            try:
                await self.sink.push(document.body)
            except PushError as exc:
                log.warning("push of %s failed: %s", document.label, exc)
                self.observer.failed(document, str(exc))
                if self._pending is None:
                    self._pending, self._force = document, force
                await asyncio.sleep(self.backoff.delay(attempt, self.rng.random()))
                attempt += 1
                self._wake.set()
                continue
            attempt = 0
            self.pushes += 1
            self.observer.pushed(document, time.perf_counter() - started)
            async with self._changed:
                self.live = document
                if document.complete and not self.ever_complete:
                    self.ever_complete, self.complete_at = True, time.monotonic()
                self._changed.notify_all()
