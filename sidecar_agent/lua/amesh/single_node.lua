-- Send the current request/session to one node: a copy of the route's own upstream (timeouts, scheme,
-- labels) with that node, set the way traffic-split sets upstreams (apisix.upstream.set, which makes
-- set_by_route keep it). Shared by amesh-passthrough and amesh-mtls.

local core = require("apisix.core")
local upstream = require("apisix.upstream")

local _M = {}

-- `tag` names the setter in the upstream's cache key; `node` = {host, port, weight}.
function _M.set(ctx, tag, node)
    -- stream: matched before preread; HTTP: access runs before APISIX looks the route's upstream up
    local route = ctx.matched_route
    local base = ctx.matched_upstream
    if not base and route and route.value.upstream_id then
        base = upstream.get_by_id(route.value.upstream_id)
    end
    local up_conf = core.table.clone(base or {})
    up_conf.nodes = { node }
    up_conf.type = "roundrobin"
    up_conf.parent = route
    local route_id = route and route.value.id or "?"
    upstream.set(ctx, tag .. "#" .. route_id .. "#" .. node.host .. ":" .. node.port, ctx.conf_version or 0, up_conf)
end

return _M
