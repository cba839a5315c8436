-- Istio mutual TLS towards TCP services (docs/data-path.md, "TCP services: the TLS origin server").
--
-- APISIX's stream servers can dial TLS with a client certificate but cannot verify the server's
-- identity (no proxy_ssl_verify_by_lua in the server blocks APISIX generates), so the stream front
-- does not dial an Istio mTLS endpoint itself: once APISIX's balancer has picked the endpoint,
-- divert() hands it (address, port, Istio's SNI, the identities the cluster accepts) across a loopback
-- hop (amesh.hop) to our own stream server on 127.0.0.1 (datapath.py `tcp_mtls_port`). There preread()
-- takes the record back, balancer() dials the endpoint, and verify() (proxy_ssl_verify_by_lua)
-- checks the server's chain against the mesh root and its URI SAN against the cluster's list.
-- Any failure closes the connection: never plaintext, never unverified.

local ngx_balancer = require("ngx.balancer")
local hop = require("amesh.hop")
local apisix_upstream = require("resty.apisix.stream.upstream")
local workload_cert = require("amesh.workload_cert")
local peer_check = require("amesh.peer_check")

local DICT = "amesh-hop-stream" -- datapath.py declares it next to the server
local RECORD_TTL = 30 -- seconds a record may wait for its connection (a dial that never came)

local _M = {}

-- The stream front, after APISIX's balancer: send this connection to our TLS origin server instead
-- of the endpoint APISIX picked. `labels`: the picked upstream's (amesh.sni, amesh.san).
function _M.divert(labels, origin_port)
    local api_ctx = ngx.ctx.api_ctx
    local ip, port = api_ctx and api_ctx.balancer_ip, api_ctx and api_ctx.balancer_port
    if not ip then
        return nil, "no endpoint picked"
    end
    local dict = ngx.shared[DICT]
    local record = table.concat({ ip, port, labels["amesh.sni"] or "", labels["amesh.san"] or "" }, "\t")
    local ctx = ngx.ctx
    local source, err = hop.bind(dict, record, RECORD_TTL, ctx.amesh_divert_source)
    ctx.amesh_divert_source = source
    if not source then
        return nil, err
    end
    local ok
    ok, err = ngx_balancer.set_current_peer("127.0.0.1", origin_port)
    if not ok then
        hop.release(dict, source)
    end
    return ok, err
end

local function refuse(why)
    ngx.log(ngx.ERR, "amesh mtls (TCP): ", why, ": connection closed")
    return ngx.exit(ngx.ERROR)
end

-- Our origin server, preread: which endpoint, and the workload certificate to present.
function _M.preread()
    local dict = ngx.shared[DICT]
    local record = hop.get(dict)
    if not record then
        return refuse("no diverted connection from " .. ngx.var.remote_addr)
    end
    hop.release(dict, ngx.var.remote_addr) -- the address is free again: a later connection may take it
    local ip, port, sni, sans = record:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$")
    ngx.ctx.amesh_origin = { ip = ip, port = tonumber(port), sans = sans ~= "" and sans or nil }
    ngx.var.amesh_origin_sni = sni
    local m, why = workload_cert.get()
    if not m then
        return refuse("no client certificate to present: " .. why)
    end
    local ok, err = apisix_upstream.set_cert_and_key(m.cert, m.key)
    if not ok then
        return refuse(err)
    end
end

function _M.balancer()
    local target = ngx.ctx.amesh_origin
    local ok, err = ngx_balancer.set_current_peer(target.ip, target.port)
    if not ok then
        ngx.log(ngx.ERR, "amesh mtls (TCP): ", err)
        return ngx.exit(ngx.ERROR)
    end
end

-- proxy_ssl_verify_by_lua with OpenSSL's own check skipped: the chain against the mesh root (the
-- workload certificate's, re-read on rotation), then the identity.
function _M.verify()
    local target = ngx.ctx.amesh_origin
    local m, why = workload_cert.get()
    if not m then
        return peer_check.refuse(peer_check.APPLICATION_VERIFICATION, "no mesh root to verify with: " .. why)
    end
    local leaf, chain = peer_check.peer_chain()
    if not leaf then
        return peer_check.refuse(peer_check.APPLICATION_VERIFICATION, "no server certificate: " .. chain)
    end
    local ok, err = m.store:verify(leaf, chain)
    if not ok then
        return peer_check.refuse(peer_check.APPLICATION_VERIFICATION,
                                 "upstream certificate not issued by the mesh root (" .. tostring(err) .. ")")
    end
    return peer_check.identity(target.sans, leaf)
end

return _M
