"""Where APISIX documents go: the Sink protocol, the admin-API and file sinks, and the coalescing pusher."""
