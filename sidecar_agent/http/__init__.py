"""The agent's HTTP endpoints on Istio's ports: health (15021), metrics (15020), admin/diagnostics (15000)."""
