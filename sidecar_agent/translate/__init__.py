"""xDS -> APISIX translation: pure functions from Envoy v3 resources to one APISIX standalone document.

API (others rely on these names):

- `translate(resources) -> Translation`: `resources` is a `sidecar_agent.configdump.XdsResources`;
  `Translation.document` is the APISIX document (`{"routes": [...], "upstreams": [...]}`, sorted by
  id, deterministic) and `Translation.report` the `Report` of unsupported fields
  (`Unsupported(kind, resource, field, count)` entries, each with an `effect`; `Report.by_effect()` for
  the agent's metric).
- `Translator`: the incremental form the agent uses. `set_cluster`, `set_endpoints`,
  `set_route_config`, `set_listener` (and `remove_*`, `replace_*` for state-of-the-world pushes) update
  one resource's cached translation and return the APISIX ids they touched; `document()` and
  `report()` reassemble. An EDS update recomputes only the upstreams of the clusters reading it; an
  RDS update only that route configuration's changed virtual hosts. `document()` patches the
  assembled document after small changes (sub-millisecond at 10,000 services); documents share
  objects with each other and with the caches, so treat them as read-only. `with t.bulk():` around
  many `set_*` calls (a first snapshot) pauses the cyclic GC as `load`/`replace_*` do.
- Data path (docs/data-path.md): `Translator(pod_ips=..., outbound_policy=..., data_path=...)` (and
  `translate(resources, **same)`) add `stream_routes` (15001 per outbound listener + the ALLOW_ANY
  catch-all, 15006 inbound) and the inbound HTTP routes; `Translator.data_path_settings` is what
  config.yaml must be rendered with (`apisix.datapath.needs_reload`). Without `pod_ips` the inbound
  side is reported, not translated.
- `TranslationError`: invalid input (the agent NACKs it). Unsupported input is not an error: it is
  translated as far as APISIX allows and reported.

Modules: `listener.py`, `route.py` (+ `match.py`, `action.py`), `cluster.py`, `endpoint.py`,
`upstream.py` (route policy x cluster x endpoints -> upstream), `document.py` (assembly, `Translator`),
`ids.py` (stable ids), `report.py` (coverage), `manager.py` (what routes inherit from their
HttpConnectionManager; listener fields), `inbound.py` / `stream.py` (the data path), `summary.py`
(`amesh-agent translate --summary`), `bootstrap.py` (INSTANCE_IPS of a config dump). Listener filter
chains are walked by `sidecar_agent/xds/chains.py`. docs/translation.md lists what maps to what.
"""

from sidecar_agent.translate.document import Translation, Translator, translate
from sidecar_agent.translate.errors import TranslationError
from sidecar_agent.translate.report import Report, Unsupported

__all__ = ["Report", "Translation", "TranslationError", "Translator", "Unsupported", "translate"]
