"""A loopback HTTP server enforcing APISIX 3.18's `PUT /apisix/admin/configs` contract.

The contract tests run against the real APISIX too (tests/realapisix.py, `apisix_admin` in
tests/agent/conftest.py); this stand-in stays for what the real one cannot be made to do on demand
(answer 503 for a while: `fail_next`; a build that does not echo X-Digest: `echo_digest`) and for the
agent tests that need no APISIX. It follows apisix/admin/standalone.lua (3.18): key, digest (missing
→ 400, same → 204), per type: a given conf version lower than held → 400, equal → the held items are
kept, higher → replaced; a type without a conf version in the body gets held + 1 (so a type left out
is cleared and its version still moves, for every type APISIX knows); duplicate ids → 400, items
checked against APISIX's own schemas when ../shared is present; GET returns the config with
X-Digest, HEAD the headers alone; `restart()` empties it like a restart.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jsonschema import Draft7Validator

SCHEMAS = Path(__file__).resolve().parents[2] / ".." / "shared" / "apisix-schema" / "3.18" / "core"
TYPES = {
    "routes": "route", "upstreams": "upstream", "services": "service", "ssls": "ssl",
    "stream_routes": "stream_route", "global_rules": "global_rule", "plugin_configs": "plugin_config",
    "consumers": "consumer", "consumer_groups": "consumer_group", "plugin_metadata": None, "protos": "proto",
    "secrets": None, "plugins": None,
}


def _validators() -> dict[str, Draft7Validator]:
    out = {}
    for kind, schema in TYPES.items():
        path = SCHEMAS / f"{schema}.json"
        if schema and path.exists():
            out[kind] = Draft7Validator(json.loads(path.read_text()), format_checker=Draft7Validator.FORMAT_CHECKER)
    return out


class FakeApisix:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.validators = _validators()
        self.lock = threading.Lock()
        self.config: dict = {}
        self.versions: dict[str, int] = {}
        self.digest: str | None = None
        self.accepted: list[dict] = []  # every document that changed the config, in order
        self.answers: list[int] = []
        self.fail_next = 0  # answer 503 to that many PUTs
        self.echo_digest = True
        self.heads = self.gets = 0  # HEAD and GET requests answered
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.gets += 1
                fake._get(self)

            def do_PUT(self):
                fake._put(self)

            def do_HEAD(self):  # APISIX's headers of a GET, no body
                fake.heads += 1
                fake._get(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApisix:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def restart(self) -> None:
        with self.lock:
            self.config, self.versions, self.digest = {}, {}, None

    def _reply(self, handler, status: int, body: dict | None = None, headers: dict | None = None,
               head: bool = False) -> None:
        data = json.dumps(body).encode() if body is not None and not head else b""
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler, head: bool = False) -> None:
        if handler.path == "/apisix/prometheus/metrics":  # APISIX's loopback exporter
            data = b'# TYPE apisix_http_status counter\napisix_http_status{code="200",route="r1"} 3\n'
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if handler.path != "/apisix/admin/configs":
            return self._reply(handler, 404, {"error_msg": "not found"}, head=head)
        if handler.headers.get("X-API-KEY") != self.api_key:
            return self._reply(handler, 401, {"error_msg": "failed to check token"}, head=head)
        with self.lock:
            body = dict(self.config)
            for kind in TYPES:
                body[f"{kind}_conf_version"] = self.versions.get(kind, 0)
            headers = {"X-Digest": self.digest} if self.digest and self.echo_digest else {}
        self._reply(handler, 200, body, headers, head)

    def _put(self, handler) -> None:
        status, body = self._check_put(handler)
        self.answers.append(status)
        self._reply(handler, status, body)

    def _check_put(self, handler) -> tuple[int, dict | None]:
        if handler.path != "/apisix/admin/configs":
            return 404, {"error_msg": "not found"}
        length = int(handler.headers.get("Content-Length", 0))
        raw = handler.rfile.read(length)
        if handler.headers.get("X-API-KEY") != self.api_key:
            return 401, {"error_msg": "failed to check token"}
        digest = handler.headers.get("X-Digest")
        if not digest:
            return 400, {"error_msg": "missing digest header"}
        if self.fail_next > 0:
            self.fail_next -= 1
            return 503, {"error_msg": "busy"}
        try:
            document = json.loads(raw)
        except ValueError as exc:
            return 400, {"error_msg": f"invalid request body: {exc}"}
        if not isinstance(document, dict):
            return 400, {"error_msg": "invalid request body: not an object"}
        with self.lock:
            if digest == self.digest:
                return 204, None
            versions = dict(self.versions)
            config = {}
            for kind in TYPES:
                key = f"{kind}_conf_version"
                held = self.versions.get(kind, 0)
                if key in document:
                    version = document[key]
                    if not isinstance(version, int) or isinstance(version, bool):
                        return 400, {"error_msg": f"{key} must be an integer"}
                    if version < held:
                        return 400, {"error_msg": f"{key} must be greater than or equal to ({held})"}
                else:
                    version = held + 1
                versions[kind] = version
                if version == held:  # equal: APISIX keeps what it holds, whatever the body says
                    if kind in self.config:
                        config[kind] = self.config[kind]
                    continue
                items = document.get(kind)
                if items is None:
                    continue
                if not isinstance(items, list):
                    return 400, {"error_msg": f"{kind} must be an array"}
                seen = set()
                for item in items:
                    if not isinstance(item, dict) or "id" not in item:
                        return 400, {"error_msg": f"{kind}: every item needs an id"}
                    if str(item["id"]) in seen:
                        return 400, {"error_msg": f"found duplicate id {item['id']} in {kind}"}
                    seen.add(str(item["id"]))
                    validator = self.validators.get(kind)
                    if validator is not None:
                        errors = sorted(validator.iter_errors(item), key=str)
                        if errors:
                            return 400, {"error_msg": f"invalid {kind} item {item['id']}: {errors[0].message}"}
                config[kind] = items
            self.config, self.versions, self.digest = config, versions, digest
            self.accepted.append(config)
        return 202, None
