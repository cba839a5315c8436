-- Test stand-in for APISIX's top module (the real one is not installable here): the hook only
-- requires it for its load-order side effect.
return {}
