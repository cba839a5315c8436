-- amesh-passthrough: Envoy's ORIGINAL_DST clusters (Istio's PassthroughCluster, inbound passthrough)
-- for APISIX, which has no such upstream type.
--
-- On a route whose upstream has no nodes (labels amesh.passthrough), the access (HTTP) / preread
-- (stream) phase sets the upstream to the original destination the amesh hook registers
-- (original_dst_addr / original_dst_port): a copy of the route's upstream with that one node
-- (amesh/single_node.lua). A destination
-- that would loop (loopback, unspecified, a capture port) or is unknown is refused: 502 (HTTP) or the
-- connection closed (stream), as Envoy's BlackHoleCluster. The decision is amesh/passthrough.lua
-- (pure, tested in Debian's nginx); this file is the APISIX glue (needs a real APISIX to test).
-- Enabled by the generated config.yaml (plugins / stream_plugins, extra_lua_path).

local core = require("apisix.core")
local passthrough = require("amesh.passthrough")
local single_node = require("amesh.single_node")

local plugin_name = "amesh-passthrough"
local is_http = ngx.config.subsystem == "http"

-- its schema is the JSON file beside this one (amesh/plugin_schema.lua)
local schema = require("amesh.plugin_schema").load(debug.getinfo(1, "S").source, plugin_name)

local _M = {
    version = 0.1,
    priority = 960, -- after the other access plugins (fault-injection aborts first), below traffic-split
    name = plugin_name,
    schema = schema,
}

function _M.check_schema(conf)
    return core.schema.check(schema, conf)
end

local refused_ports
local function capture_ports()
    if not refused_ports then
        local attr = (core.config.local_conf().plugin_attr or {}).amesh or {}
        refused_ports = {
            [tonumber(attr.outbound_port) or 15001] = true,
            [tonumber(attr.inbound_port) or 15006] = true,
        }
    end
    return refused_ports
end

local function host_address(ctx)
    local host = ctx.var.host
    if not host or host == "" then
        return nil, "no Host"
    end
    if passthrough.parse(host) then
        return host
    end
    local ip, err = core.resolver.parse_domain(host)
    if not ip then
        return nil, "Host " .. host .. " does not resolve: " .. tostring(err)
    end
    return ip
end

-- Set ctx's upstream to the original destination; true, or nil and why.
function _M.set_upstream(conf, ctx)
    local addr, port = ctx.var.original_dst_addr, ctx.var.original_dst_port
    if not addr and is_http and conf.host_fallback ~= false and port then
        local err
        addr, err = host_address(ctx)
        if not addr then
            return nil, err
        end
    end
    local node, err = passthrough.node(addr, port, capture_ports())
    if not node then
        return nil, err
    end
    single_node.set(ctx, plugin_name, node)
    return true
end

function _M.access(conf, ctx)
    local ok, err = _M.set_upstream(conf, ctx)
    if not ok then
        core.log.warn("amesh-passthrough refused: ", err)
        return 502
    end
end

function _M.preread(conf, ctx)
    local ok, err = _M.set_upstream(conf, ctx)
    if not ok then
        core.log.warn("amesh-passthrough refused: ", err)
        return 503 -- a stream plugin's code ends the session
    end
end

return _M
