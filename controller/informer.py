"""List-then-watch loop for one resource, feeding an asyncio consumer (the watch runs in a thread).

- list → `on_sync(items)` (the full set: whatever is missing from it was deleted meanwhile)
- watch from the list's resourceVersion → `on_event(event)`; the version to resume from is copied from
  each event and BOOKMARK, never compared
- the server ends the watch (timeoutSeconds) → watch again from the last version
- `Gone` (410) → list again; any other failure → wait with jittered exponential backoff, then retry
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from controller.kube import Gone, Kube, Watch, WatchEvent
from amesh_common.backoff import Backoff

log = logging.getLogger(__name__)

_END = object()


@dataclass(eq=False)
class Informer:
    kube: Kube
    path: str
    on_sync: Callable[[list[dict]], Awaitable[None]]
    on_event: Callable[[WatchEvent], Awaitable[None]]
    backoff: Backoff = Backoff(initial=0.5, maximum=30.0)
    watch_timeout: int = 300
    on_restart: Callable[[str], None] = lambda reason: None
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    resource_version: str | None = None
    _watch: Watch | None = None

    async def run(self) -> None:
        attempt = 0
        try:
            while True:
                try:
                    if self.resource_version is None:
                        items, self.resource_version = await asyncio.to_thread(self.kube.list, self.path)
                        await self.on_sync(items)
                        self.synced.set()
                    await self._watch_once()
                    attempt = 0
                except Gone:
                    log.info("%s: resourceVersion expired, relisting", self.path)
                    self.on_restart("gone")
                    self.resource_version = None
                except Exception as exc:  # any API or connection failure: back off and retry
                    delay = self.backoff.delay(attempt, random.random())
                    attempt += 1
                    log.warning("%s: %s; retrying in %.1fs", self.path, exc, delay)
                    self.on_restart("error")
                    await asyncio.sleep(delay)
        finally:
            self.stop()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.close()

    async def _watch_once(self) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        watch = await asyncio.to_thread(self.kube.watch, self.path, self.resource_version or "", self.watch_timeout)
        self._watch = watch

        def hand_over(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is waiting any more
                watch.close()

        def pump() -> None:  # blocking reads stay in this thread; events cross via the loop
            try:
                for event in watch:
                    hand_over(event)
                hand_over(_END)
            except Exception as exc:  # handed to the loop, raised there
                hand_over(exc)

        threading.Thread(target=pump, name=f"watch{self.path}", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.resource_version:
                    self.resource_version = item.resource_version
                if item.type != "BOOKMARK":
                    await self.on_event(item)
        finally:
            watch.close()
            self._watch = None
