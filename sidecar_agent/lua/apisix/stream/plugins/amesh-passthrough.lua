-- APISIX loads stream plugins as apisix.stream.plugins.<name> (plugin.lua load_stream): the stream side of
-- amesh-passthrough is the same module, whose preread phase sets the original destination.
return require("apisix.plugins.amesh-passthrough")
