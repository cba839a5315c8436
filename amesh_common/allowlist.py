"""Which APISIX plugins amesh-controller may put on a sidecar's routes (pure; controller and agent share it).

A list is a comma-separated string of names or `fnmatch` patterns (`AMESH_ALLOWED_PLUGINS`, the
controller's `--allowed-plugins`):

    response-rewrite,fault-injection,ip-restriction     # exactly these
    *                                                   # every plugin that does not run code (the default)
    *,serverless-pre-function                           # ... and that one code-running plugin too

Plugins that run code inside APISIX — `serverless-pre-function`, `serverless-post-function` (arbitrary Lua)
and every `ext-plugin-*` (a plugin runner process: the pre-req/post-req types) — are allowed only when an
entry *other than* the bare `*` matches them, so a wildcard never turns them on by accident. An empty or
unset list means the default, `*`.

A plugin is checked under the name APISIX will see: a plain plugin under its own name, a pre-req/post-req
plugin as `ext-plugin-pre-req`/`ext-plugin-post-req` (the external plugin's own name is the runner's
business, not APISIX's).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from amesh_common.plugin_model import EXT_PLUGIN, PluginType

WILDCARD = "*"
DEFAULT = WILDCARD
CODE_RUNNING_NAMES = frozenset({"serverless-pre-function", "serverless-post-function"})
CODE_RUNNING_PREFIX = "ext-plugin-"


def runs_code(apisix_name: str) -> bool:
    return apisix_name in CODE_RUNNING_NAMES or apisix_name.startswith(CODE_RUNNING_PREFIX)


def apisix_name(name: str, ptype: PluginType) -> str:
    """The plugin name APISIX sees on the route for a controller plugin."""
    return name if ptype is PluginType.PLAIN else EXT_PLUGIN[ptype]


@dataclass(frozen=True)
class Allowlist:
    patterns: tuple[str, ...] = (WILDCARD,)

    @classmethod
    def parse(cls, text: str | Iterable[str] | None) -> "Allowlist":
        if text is None:
            return cls()
        items = text.split(",") if isinstance(text, str) else [i for t in text for i in str(t).split(",")]
        patterns = tuple(dict.fromkeys(p.strip() for p in items if p.strip()))
        return cls(patterns or (WILDCARD,))

    def allows(self, apisix_plugin: str) -> bool:
        for pattern in self.patterns:
            if pattern == WILDCARD:
                if not runs_code(apisix_plugin):
                    return True
            elif fnmatch.fnmatchcase(apisix_plugin, pattern):
                return True
        return False

    def refusal(self, name: str, ptype: PluginType = PluginType.PLAIN) -> str | None:
        """None if allowed, else why not (one line)."""
        seen = apisix_name(name, ptype)
        if self.allows(seen):
            return None
        what = f"{ptype.value} plugin {name!r} ({seen})" if ptype is not PluginType.PLAIN else f"plugin {name!r}"
        hint = " (it runs code in APISIX: it must be listed by name)" if runs_code(seen) else ""
        return f"{what} is not in the allowed plugins [{self.describe()}]{hint}"

    def describe(self) -> str:
        return ",".join(self.patterns)
