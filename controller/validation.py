"""Check each plugin of an AmeshPluginConfig against APISIX's own schema for that plugin.

A plugin is validated in exactly the form the agent will put on a route (`apisix_form`): a plain plugin
under its name, a pre-req/post-req one wrapped as `ext-plugin-pre-req`/`-post-req` with a string
`value`. The schemas come from `../shared/apisix-schema/<version>` in development and from the image's
copy in production; the checks are the agent's (`sidecar_agent.schema`: Draft 7, formats asserted,
defaults filled first as APISIX does), so controller and agent cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from sidecar_agent.plugins.merge import apisix_form
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginType
from sidecar_agent.schema import Schemas


class PluginChecker:
    def __init__(self, schema_dir: str | Path) -> None:
        self.schemas = Schemas(schema_dir)  # raises FileNotFoundError naming the directory

    def __call__(self, name: str, ptype: PluginType, config: dict) -> list[str]:
        if ptype is PluginType.PLAIN and name.startswith("ext-plugin-"):
            return [f"use type pre-req/post-req instead of the plugin {name!r} itself"]
        plugin = ControllerPlugin(Direction.OUTBOUND, ptype, name, json.dumps(config, sort_keys=True))
        # A plugins-only route: the core route schema accepts it, so every problem is the plugin's.
        return self.schemas.check("route", {"uri": "/*", "plugins": apisix_form([plugin])})
