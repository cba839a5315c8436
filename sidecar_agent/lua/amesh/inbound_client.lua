-- The client's address behind the inbound front (docs/data-path.md, "The client behind the hop").
--
-- Inbound connections reach the pod's HTTP routes, and its mTLS listeners, through a hop: the stream
-- front on 15006 forwards them to our loopback listeners, which would see the front's address, not the
-- client's. record() (the front, after APISIX's balancer) hands the client's address and port across the
-- hop (amesh.hop); client() (the listener) reads them back; release() (the front's log phase) drops them
-- when the client's connection ends, as every request on the hop's connection may ask.
--
-- The record must be readable by the HTTP subsystem, so it lives in a shared dict of APISIX's `lua {}`
-- block, the only one both subsystems see (nginx allows one such block and APISIX writes it): `nacos`,
-- which only APISIX's nacos service discovery uses and which the agent never configures.

local hop = require("amesh.hop")

local DICT = "nacos"

local _M = { DICT = DICT }

local function dict()
    return ngx.shared[DICT]
end

-- The front: when APISIX picked one of our loopback listeners (`listeners`: port string -> true) as the
-- upstream, bind the hop to a fresh source that names this client.
function _M.record(listeners)
    local api_ctx = ngx.ctx.api_ctx
    if not (api_ctx and api_ctx.balancer_ip == "127.0.0.1" and listeners[tostring(api_ctx.balancer_port)]) then
        return
    end
    local shared = dict()
    if not shared then
        return -- logged once at start (the hook)
    end
    local ctx = ngx.ctx
    local source, err = hop.bind(shared, ngx.var.remote_addr .. " " .. ngx.var.remote_port, 0, ctx.amesh_hop_source)
    ctx.amesh_hop_source = source
    if not source then
        -- the hop leaves from Istio's 127.0.0.6 then, and the client stays unknown behind it (fail closed)
        ngx.log(ngx.WARN, "amesh: client address not handed to the inbound listener: ", err)
    end
end

function _M.release()
    local source = ngx.ctx.amesh_hop_source
    if source then
        hop.release(dict(), source)
    end
end

-- A listener behind the front: the client's address and port, or nil when unknown. (HTTP: the hop's own
-- address is $realip_remote_addr once an earlier request on the connection set the client's.)
function _M.client()
    local shared = dict()
    local addr = ngx.config.subsystem == "http" and ngx.var.realip_remote_addr or ngx.var.remote_addr
    local record = shared and hop.get(shared, addr)
    if not record then
        return nil
    end
    local ip, port = record:match("^(%S+) (%d+)$")
    return ip, tonumber(port)
end

return _M
