"""Serialise an APISIX document: JSON for `PUT /apisix/admin/configs`, YAML for `conf/apisix.yaml`.

Both are byte-for-byte deterministic (sorted keys), and objects a document shares are written out at
every occurrence (no YAML anchors). APISIX ignores an `apisix.yaml` that does not end with a `#END`
line, so the YAML form always ends with one.
"""

from __future__ import annotations

import json


def to_json(document: dict) -> str:
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def to_yaml(document: dict) -> str:
    import yaml

    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):  # type: ignore[misc, valid-type]
        # Documents share read-only objects (an endpoint set's nodes among its cluster's upstreams):
        # write each occurrence out in full, never as a YAML &anchor / *alias.
        def ignore_aliases(self, data) -> bool:
            return True

    body = yaml.dump(document, Dumper=Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=1 << 16)
    return body + "#END\n"


def render(document: dict, fmt: str) -> str:
    if fmt == "json":
        return to_json(document)
    if fmt == "yaml":
        return to_yaml(document)
    raise ValueError(f"unknown format {fmt!r} (json or yaml)")
