"""The seam between the agent and APISIX: a sink takes whole documents, all or nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class PushError(Exception):
    """APISIX did not take the document (unreachable, refused, or the write failed)."""


class Sink(Protocol):
    async def push(self, document: Mapping[str, Any]) -> None:
        """Make `document` APISIX's whole configuration, or raise PushError and change nothing."""

    async def holds_last(self) -> bool:
        """Whether APISIX still holds the last document pushed (False after it restarted empty)."""
