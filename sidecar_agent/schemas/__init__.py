"""APISIX's own JSON Schemas, shipped with the agent and the controller.

The sidecar refuses (NACKs) documents APISIX would reject and the controller refuses plugin configs, both at
run time in the pod, where `../shared` does not exist: so the schemas APISIX 3.18.0 generated from its Lua code
(see apisix-3.18/README.md) travel as package data. A test checks this copy is byte-identical to the reference
set in ../shared/apisix-schema/3.18 when that is present.
"""

from __future__ import annotations

from pathlib import Path

APISIX_SCHEMA_DIR = Path(__file__).parent / "apisix-3.18"
