-- amesh-mtls: Istio's PeerAuthentication on an inbound port, for the stream front on 15006 (stream only).
--
-- Envoy picks an inbound chain by transport (tls_inspector); APISIX has one stream route per (pod
-- address, port). In preread this plugin peeks at the connection's first byte: a TLS handshake record
-- (0x16) goes to the port's TLS listener (conf.tls_port on 127.0.0.1, where amesh.mtls_server terminates
-- it with the workload certificate and the client must present one from the mesh root); anything else
-- is plaintext, served by the route's own upstream when the port accepts it (conf.plaintext:
-- PERMISSIVE) and closed when it does not (STRICT). A client that sends nothing within conf.detect_timeout
-- seconds (a server-first protocol) counts as plaintext. Runs before amesh-rbac, which leaves TLS
-- connections to the TLS listener's route (where the client's identity is known).

local core = require("apisix.core")
local single_node = require("amesh.single_node")

local plugin_name = "amesh-mtls"
local TLS_HANDSHAKE = "\22" -- TLS record type 22: handshake (a ClientHello starts with it)

-- its schema is the JSON file beside this one (amesh/plugin_schema.lua)
local schema = require("amesh.plugin_schema").load(debug.getinfo(1, "S").source, plugin_name)

local _M = {
    version = 0.1,
    priority = 12000, -- before amesh-rbac (11500) and amesh-passthrough
    name = plugin_name,
    schema = schema,
}

function _M.check_schema(conf)
    return core.schema.check(schema, conf)
end

function _M.preread(conf, ctx)
    local sock, err = ngx.req.socket(true)
    if not sock then
        core.log.error("amesh-mtls: no downstream socket: ", err)
        return 503
    end
    sock:settimeout((conf.detect_timeout or 5) * 1000)
    local first
    first, err = sock:peek(1)
    if not first and err ~= "timeout" then
        return 503 -- the client went away
    end
    if first == TLS_HANDSHAKE then
        ctx.amesh_tls_forwarded = true
        single_node.set(ctx, plugin_name, { host = "127.0.0.1", port = conf.tls_port, weight = 1 })
        return
    end
    if not conf.plaintext then
        core.log.warn("amesh-mtls: plaintext connection from ", ctx.var.remote_addr,
                      " refused: the port requires mTLS (PeerAuthentication STRICT)")
        return 503 -- a stream plugin's code ends the session
    end
end

return _M
