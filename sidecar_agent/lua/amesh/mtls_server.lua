-- Inbound mTLS termination on the TLS listeners (127.0.0.1, one per pod port with mTLS chains: HTTP ones
-- for HTTP ports, stream ones for TCP ports;
-- plugin_attr.amesh.tls_ports; docs/data-path.md "Inbound mTLS"). The stream front on 15006 sends a
-- connection there when its first byte starts a TLS handshake (plugin amesh-mtls). Here, instead of
-- APISIX's SNI-keyed `ssls` (Envoy clients send Istio's outbound_… SNI, or none), every handshake gets
-- the workload certificate and must present a client certificate issued by the mesh root (rejected in
-- the handshake otherwise). The server sets no ALPN, so a client's Istio ALPN list (istio-peer-exchange,
-- istio-http/1.1, …) is ignored rather than refused.

local ngx_ssl = require("ngx.ssl")
local workload_cert = require("amesh.workload_cert")

local VERIFY_DEPTH = 5 -- leaf, intermediates, root: Istio's CA chains are short

local _M = {}

-- Is this handshake on one of our TLS listeners?
function _M.ours(tls_ports)
    local port = ngx_ssl.server_port()
    return port ~= nil and tls_ports[tostring(port)] ~= nil
end

-- ssl_certificate_by_lua for our listeners: true, or nil and why (the handshake then fails).
function _M.certificate()
    local m, why = workload_cert.get()
    if not m then
        return nil, why
    end
    local ok, err = ngx_ssl.clear_certs()
    if ok then
        ok, err = ngx_ssl.set_cert(m.cert)
    end
    if ok then
        ok, err = ngx_ssl.set_priv_key(m.key)
    end
    if ok then
        ok, err = ngx_ssl.verify_client(m.roots, VERIFY_DEPTH, nil, true)
    end
    return ok, err
end

return _M
