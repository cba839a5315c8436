-- APISIX loads stream plugins as apisix.stream.plugins.<name> (plugin.lua load_stream): the stream side of
-- amesh-rbac is the same module, whose preread phase enforces the network RBAC filters.
return require("apisix.plugins.amesh-rbac")
