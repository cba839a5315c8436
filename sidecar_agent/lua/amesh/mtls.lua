-- Istio mutual TLS on the upstream connections of the HTTP subsystem (docs/data-path.md "mTLS").
--
-- Stock APISIX can present a client certificate per request (apisix-nginx-module) but verifies an
-- upstream's certificate only by host name, which Istio's certificates (one URI SAN, the SPIFFE id,
-- no DNS name) never match. So, for an upstream labelled `amesh.tls: istio-mutual`:
--   after_access(): the workload certificate and key (amesh.workload_cert: the agent's files, re-read
--     at most once a second, rotation needs no reload), the mesh root as the trusted store, Istio's SNI
--     (`amesh.sni`) into $amesh_ssl_name, and nginx's own host-name check off for this request;
--   verify() (proxy_ssl_verify_by_lua): the chain must verify against the mesh root and, when the
--     cluster names identities (`amesh.san`, comma-separated), the server's URI SAN must be one of
--     them. Anything else fails the handshake (502), never a plaintext or unverified fallback.
-- Upstreams without the label keep APISIX's behaviour (no verification), as before.

local ffi = require("ffi")
local ngx_ssl = require("ngx.ssl")
local proxy_verify = require("ngx.ssl.proxysslverify")
local apisix_upstream = require("resty.apisix.upstream")
local openssl_x509 = require("resty.openssl.x509")
local workload_cert = require("amesh.workload_cert")
local uri_sans = require("amesh.uri_sans")
require("resty.openssl.include.ssl") -- the SSL_set_verify declaration

local X509_V_OK = 0
local X509_V_ERR_APPLICATION_VERIFICATION = 50
local SSL_VERIFY_PEER = 1

local _M = {}

-- After APISIX's access phase: the upstream is known, the connection not made yet. `labels`: the picked
-- upstream's when it is Istio mTLS (the hook's check), else nil.
function _M.after_access(labels)
    if not ngx.ctx.api_ctx then
        return
    end
    -- nginx checks the upstream certificate's host name when verification is on; verify() decides instead
    apisix_upstream.set_ssl_verify(false)
    if not labels then
        return
    end
    local state = { sans = labels["amesh.san"] }
    ngx.ctx.amesh_mtls = state
    if labels["amesh.sni"] then
        ngx.var.amesh_sni = labels["amesh.sni"]
    end
    local m, why = workload_cert.get()
    if not m then
        state.refuse = why
        return
    end
    local ok, err = apisix_upstream.set_cert_and_key(m.cert, m.key)
    if ok then
        ok, err = apisix_upstream.set_ssl_trusted_store(m.store)
    end
    if not ok then
        state.refuse = err
    end
end

local function allowed(sans, uri)
    for want in sans:gmatch("[^,]+") do
        if want == uri then
            return true
        end
    end
    return false
end

local function peer_uris()
    local cert = proxy_verify.get_verify_cert()
    if not cert then
        return {}
    end
    return uri_sans(openssl_x509.dup(ffi.cast("X509*", cert)))
end

-- With nginx's check off for the request (after_access) the connection verifies nothing (SSL_VERIFY_NONE),
-- so OpenSSL would ignore a failed verdict: switching this connection to SSL_VERIFY_PEER before failing
-- makes OpenSSL end the handshake, and nginx answers 502.
local function refuse(code)
    local conn, err = ngx_ssl.get_upstream_ssl_pointer()
    if conn then
        ffi.C.SSL_set_verify(ffi.cast("SSL*", conn), SSL_VERIFY_PEER, nil)
    else
        ngx.log(ngx.ERR, "amesh mtls: cannot reach the upstream TLS connection: ", err)
    end
    proxy_verify.set_verify_result(code)
    return ngx.exit(ngx.ERROR)
end

-- proxy_ssl_verify_by_lua: the verdict on the upstream's certificate.
function _M.verify()
    local state = ngx.ctx.amesh_mtls
    if not state then
        return proxy_verify.set_verify_result(X509_V_OK) -- not Istio mTLS: unverified, as before
    end
    if state.refuse then
        ngx.log(ngx.ERR, "amesh mtls: no client certificate to present: ", state.refuse)
        return refuse(X509_V_ERR_APPLICATION_VERIFICATION)
    end
    local result = proxy_verify.get_verify_result()
    if result ~= X509_V_OK then
        ngx.log(ngx.ERR, "amesh mtls: upstream certificate not issued by the mesh root (X509 error ", result, ")")
        return refuse(result)
    end
    if state.sans then
        local uris = peer_uris()
        for _, uri in ipairs(uris) do
            if allowed(state.sans, uri) then
                return proxy_verify.set_verify_result(X509_V_OK)
            end
        end
        ngx.log(ngx.ERR, "amesh mtls: upstream identity ", table.concat(uris, " "), " is not one of ", state.sans)
        return refuse(X509_V_ERR_APPLICATION_VERIFICATION)
    end
    return proxy_verify.set_verify_result(X509_V_OK)
end

return _M
