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

local proxy_verify = require("ngx.ssl.proxysslverify")
local apisix_upstream = require("resty.apisix.upstream")
local workload_cert = require("amesh.workload_cert")
local peer_check = require("amesh.peer_check")

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

-- proxy_ssl_verify_by_lua: the verdict on the upstream's certificate.
function _M.verify()
    local state = ngx.ctx.amesh_mtls
    if not state then
        return proxy_verify.set_verify_result(peer_check.OK) -- not Istio mTLS: unverified, as before
    end
    if state.refuse then
        return peer_check.refuse(peer_check.APPLICATION_VERIFICATION,
                                 "no client certificate to present: " .. state.refuse)
    end
    local result = proxy_verify.get_verify_result()
    if result ~= peer_check.OK then
        return peer_check.refuse(result,
                                 "upstream certificate not issued by the mesh root (X509 error " .. result .. ")")
    end
    return peer_check.identity(state.sans) -- OpenSSL verified the chain (the trusted store of after_access)
end

return _M
