-- The verdict on an upstream's certificate in proxy_ssl_verify_by_lua, shared by the HTTP (amesh.mtls)
-- and TCP (amesh.mtls_origin) sides of Istio mutual TLS: the server's URI SAN against the identities
-- the cluster accepts, and the refusal that really ends the handshake.

local ffi = require("ffi")
local ngx_ssl = require("ngx.ssl")
local proxy_verify = require("ngx.ssl.proxysslverify")
local openssl_x509 = require("resty.openssl.x509")
local openssl_chain = require("resty.openssl.x509.chain")
local uri_sans = require("amesh.uri_sans")
require("resty.openssl.include.ssl") -- SSL_set_verify, SSL_get_peer_cert_chain

local _M = {
    OK = 0,
    APPLICATION_VERIFICATION = 50, -- X509_V_ERR_APPLICATION_VERIFICATION
}
local SSL_VERIFY_PEER = 1

local function upstream_ssl()
    local conn, err = ngx_ssl.get_upstream_ssl_pointer()
    if not conn then
        return nil, err
    end
    return ffi.cast("SSL*", conn)
end

-- The connection may verify nothing (SSL_VERIFY_NONE: nginx's own check off), and then OpenSSL would
-- ignore a failed verdict: switching it to SSL_VERIFY_PEER before failing makes OpenSSL end the
-- handshake (HTTP answers 502, TCP closes).
function _M.refuse(code, why)
    ngx.log(ngx.ERR, "amesh mtls: ", why)
    local ssl, err = upstream_ssl()
    if ssl then
        ffi.C.SSL_set_verify(ssl, SSL_VERIFY_PEER, nil)
    else
        ngx.log(ngx.ERR, "amesh mtls: cannot reach the upstream TLS connection: ", err)
    end
    proxy_verify.set_verify_result(code)
    return ngx.exit(ngx.ERROR)
end

-- The server's leaf certificate (resty.openssl x509), or nil when it presented none.
local function leaf()
    local cert = proxy_verify.get_verify_cert()
    return cert and openssl_x509.dup(ffi.cast("X509*", cert)) or nil
end

-- The server's leaf and the chain it sent (x509.chain), for a verification of our own (the TCP side); or
-- nil and why.
function _M.peer_chain()
    local cert = leaf()
    if not cert then
        return nil, "none presented"
    end
    local ssl = upstream_ssl()
    local stack = ssl and ffi.C.SSL_get_peer_cert_chain(ssl)
    if stack == nil then
        return cert, nil
    end
    local chain, err = openssl_chain.dup(stack)
    if not chain then
        return nil, err
    end
    return cert, chain
end

local function allowed(sans, uri)
    for want in sans:gmatch("[^,]+") do
        if want == uri then
            return true
        end
    end
    return false
end

-- `sans`: the cluster's accepted identities (comma-separated), nil for any workload of the mesh. `cert`:
-- the server's leaf when the caller has it already; else it is read only when there are identities to check.
function _M.identity(sans, cert)
    if not sans then
        return proxy_verify.set_verify_result(_M.OK)
    end
    local uris = uri_sans(cert or leaf())
    for _, uri in ipairs(uris) do
        if allowed(sans, uri) then
            return proxy_verify.set_verify_result(_M.OK)
        end
    end
    return _M.refuse(_M.APPLICATION_VERIFICATION,
                     "upstream identity " .. table.concat(uris, " ") .. " is not one of " .. sans)
end

return _M
