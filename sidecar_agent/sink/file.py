"""File-driven standalone: the whole document in `conf/apisix.json` (or `apisix.yaml`).

The agent writes JSON (`deployment.role_data_plane.config_provider: json`): APISIX 3.18 parses the YAML form
with lyaml, ~40 s for the 7.3 MB document of a 1,000-service mesh in every worker, blocking requests
meanwhile (benchmarks/apisix_scale.py: 26 s to load, 1,099 of 2,561 requests failed during a change), and the
same document as JSON in 2.85 s with none failing. A path ending in `.yaml` still gets YAML with the `#END` line
APISIX's YAML provider requires.

APISIX polls the file's change time once a second, in whole seconds (apisix-facts.md). So: write a temp file
beside it, fsync, rename over it (APISIX never reads half a file), and never let two writes land in the same
second — the second one would be lost — by waiting for the next second and setting an mtime strictly newer
than the last.

The file is mode 0600 from its creation (a temp file mkstemp makes 0600, renamed over the old one): it is
never readable by other users, not even for a moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar_agent.sink.base import PushError
from sidecar_agent.translate.render import to_yaml

_SECOND = 1_000_000_000


def render(document: Mapping[str, Any], fmt: str = "json") -> str:
    """The file's text for a document (pure): compact JSON, or YAML ending with `#END` (fmt "yaml")."""
    if fmt == "yaml":
        # The translator's renderer: documents share read-only objects, which must not become YAML aliases.
        return to_yaml(dict(document))
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def wait_before_write(last_mtime_ns: int | None, now_ns: int) -> float:
    """Seconds to wait so the next write falls in a later whole second than the last one (pure)."""
    if last_mtime_ns is None or now_ns // _SECOND > last_mtime_ns // _SECOND:
        return 0.0
    return ((last_mtime_ns // _SECOND + 1) * _SECOND - now_ns) / _SECOND


@dataclass
class FileSink:
    path: Path
    clock_ns: Callable[[], int] = time.time_ns
    last_mtime_ns: int | None = field(default=None, init=False)

    async def push(self, document: Mapping[str, Any]) -> None:
        text = render(document, "yaml" if self.path.suffix in (".yaml", ".yml") else "json")
        delay = wait_before_write(self.last_mtime_ns, self.clock_ns())
        while delay > 0:
            await asyncio.sleep(delay)
            delay = wait_before_write(self.last_mtime_ns, self.clock_ns())
        try:
            self.last_mtime_ns = await asyncio.to_thread(self._write, text)
        except OSError as exc:
            raise PushError(f"writing {self.path}: {exc}") from exc

    async def holds_last(self) -> bool:
        if self.last_mtime_ns is None:
            return True
        try:
            return self.path.stat().st_mtime_ns == self.last_mtime_ns
        except FileNotFoundError:
            return False

    def _write(self, text: str) -> int:
        def mtime() -> int:
            next_second = (self.last_mtime_ns // _SECOND + 1) * _SECOND if self.last_mtime_ns else 0
            return max(self.clock_ns(), next_second)

        return write_private(self.path, text, mtime)


def _owner(path: Path) -> tuple[int, int] | None:
    """Whom root should hand the new file to: the owner of the file it replaces, else of its directory,
    when that is not root (APISIX's own prefix, owned by UID 1337). None when not root or nobody else."""
    if os.geteuid() != 0:
        return None
    for candidate in (path, path.parent):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        return (st.st_uid, st.st_gid) if st.st_uid != 0 else None
    return None


def write_private(path: Path, text: str, mtime_ns: Callable[[], int] | None = None) -> int | None:
    """Replace `path` with `text`: mode 0600 from the moment the file exists (mkstemp creates it so whatever
    the umask), written under a temporary name beside it, fsynced and renamed over it — never readable by
    another user, never half-written. Run as root (tests, a root agent) it keeps the owner of the file it
    replaces (else of the directory), so the APISIX user still reads it. Sets the mtime to `mtime_ns()` when
    given and returns it."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    owner = _owner(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        os.fchmod(fd, 0o600)  # already so; explicit, and never wider
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        mtime = None
        if mtime_ns is not None:
            mtime = mtime_ns()
            os.utime(tmp, ns=(mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return mtime
