#!/usr/bin/env bash
# The main job, no cluster needed: what amesh-iptables programs for Istio's default injection arguments
# (dry run: prints, changes nothing), and the APISIX configuration the sidecar agent makes of the Bookinfo
# productpage sidecar's xDS (a config dump this project generates and ships).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== amesh-iptables dry run, Istio's default injection arguments"
.venv/bin/amesh-iptables istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' \
    -d 15090,15021,15020 --dry-run
if [ -f e2e/bookinfo/productpage.config_dump.json ]; then
    out="${TMPDIR:-/tmp}/amesh-bookinfo-apisix.yaml"
    echo "== amesh-agent translate e2e/bookinfo/productpage.config_dump.json (summary; the APISIX standalone YAML: $out)"
    .venv/bin/amesh-agent translate e2e/bookinfo/productpage.config_dump.json --format yaml -o "$out" --summary
fi
