"""Check each plugin of an AmeshPluginConfig against APISIX's own schema for that plugin.

A plugin is validated in exactly the form the agent will put on a route (`apisix_form`): a plain plugin
under its name, a pre-req/post-req one wrapped as `ext-plugin-pre-req`/`-post-req` with a string
`value`. The schemas come from `../shared/apisix-schema/<version>` in development and from the image's
copy in production; the checks are the agent's (`sidecar_agent.schema`: Draft 7, formats asserted,
defaults filled first as APISIX does), so controller and agent cannot disagree.

Before the schema, the plugin must be on the controller's `--allowed-plugins` (amesh_common.allowlist; by
default every plugin that runs no code in APISIX). A config naming another plugin is Invalid: its status
says which plugin and the list, and nothing of it is delivered. The agents enforce their own list
(`AMESH_ALLOWED_PLUGINS`, from the mesh chart) again, whatever the controller sends.
"""

from __future__ import annotations

import json
from pathlib import Path

from amesh_common.allowlist import Allowlist
from sidecar_agent.plugins.merge import apisix_form
from amesh_common.plugin_model import ControllerPlugin, Direction, PluginType
from sidecar_agent.schema import Schemas


class PluginChecker:
    def __init__(self, schema_dir: str | Path, allowed: Allowlist = Allowlist()) -> None:
        self.schemas = Schemas(schema_dir)  # raises FileNotFoundError naming the directory
        self.allowed = allowed

    def __call__(self, name: str, ptype: PluginType, config: dict) -> list[str]:
        if ptype is PluginType.PLAIN and name.startswith("ext-plugin-"):
            return [f"use type pre-req/post-req instead of the plugin {name!r} itself"]
        refusal = self.allowed.refusal(name, ptype)
        if refusal:
            return [f"{refusal}: not delivered (the controller's --allowed-plugins)"]
        plugin = ControllerPlugin(Direction.OUTBOUND, ptype, name, json.dumps(config, sort_keys=True))
        # A plugins-only route: the core route schema accepts it, so every problem is the plugin's.
        return self.schemas.check("route", {"uri": "/*", "plugins": apisix_form([plugin])})
