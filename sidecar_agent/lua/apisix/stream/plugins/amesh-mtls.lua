-- APISIX loads stream plugins as apisix.stream.plugins.<name> (plugin.lua load_stream).
return require("apisix.plugins.amesh-mtls")
