"""What amesh-controller and the sidecar agent share, depending on neither: the plugin model, the plugin
stream's generated gRPC code (`proto`) and its message conversion (`wire`), jittered backoff, the small
HTTP server behind the health/metrics/admin endpoints."""
