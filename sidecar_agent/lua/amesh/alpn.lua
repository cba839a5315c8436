-- Istio's ALPN on the upstream TLS connections nginx dials for Istio mutual TLS (docs/data-path.md, "ALPN").
--
-- An Envoy sidecar in PERMISSIVE mode picks its mTLS filter chain by the client's ALPN (istio,
-- istio-peer-exchange, istio-http/1.1, …): TLS without it falls to the chain for the application's own
-- TLS and fails. nginx has no directive to offer ALPN towards an upstream, and OpenResty no per-connection
-- hook before the ClientHello, so the protocols are set on the SSL_CTX of the two places that dial Istio
-- mTLS: APISIX's `location /` (HTTP) and our TLS origin server (TCP, amesh.mtls_origin). Each carries a
-- marker (datapath.py: `proxy_ssl_conf_command Options …`, options that only matter to a TLS *server*, so
-- they change nothing for a client): install() finds the contexts nginx created among the cycle pool's
-- cleanups (every ngx_ssl_create registers ngx_ssl_cleanup_ctx with its ngx_ssl_t there) and sets the
-- protocols on the marked ones, once per worker, before any connection.
-- Upstreams of the HTTP location that are not Istio mTLS are offered the same list, which ends in
-- http/1.1: a server that knows none of the istio names picks http/1.1 or ignores ALPN.

local ffi = require("ffi")
local C = ffi.C

local function declare(def)
    pcall(ffi.cdef, def) -- tolerate a declaration another module made first
end
declare([[
typedef struct amesh_ngx_pool_cleanup_s {
    void *handler; void *data; struct amesh_ngx_pool_cleanup_s *next;
} amesh_ngx_pool_cleanup_t;
typedef struct {
    void *d_last; void *d_end; void *d_next; uintptr_t d_failed; /* ngx_pool_data_t */
    size_t max; void *current; void *chain; void *large;
    amesh_ngx_pool_cleanup_t *cleanup; void *log;
} amesh_ngx_pool_t;
typedef struct { void *conf_ctx; amesh_ngx_pool_t *pool; } amesh_ngx_cycle_head_t;
typedef struct { void *ctx; void *log; size_t buffer_size; } amesh_ngx_ssl_t;
]])
declare("void *ngx_cycle;")
declare("void ngx_ssl_cleanup_ctx(void *data);")
declare("uint64_t SSL_CTX_get_options(const void *ctx);")
declare("int SSL_CTX_set_alpn_protos(void *ctx, const unsigned char *protos, unsigned int protos_len);")

local _M = {
    -- server-side-only options as markers (a client never uses them): PrioritizeChaCha marks ours (nginx
    -- never sets it), ServerPreference besides (as a server context with prefer_server_ciphers has) the
    -- HTTP one
    MARKER = 0x00200000, -- SSL_OP_PRIORITIZE_CHACHA ("Options PrioritizeChaCha")
    HTTP_MARKER = 0x00400000, -- SSL_OP_CIPHER_SERVER_PREFERENCE ("Options ServerPreference")
    -- what an Envoy sidecar offers (Istio's ALPN override for mTLS clusters)
    HTTP_PROTOCOLS = { "istio-http/1.1", "istio", "http/1.1" },
    TCP_PROTOCOLS = { "istio-peer-exchange", "istio" },
}
local MAX_CLEANUPS = 100000 -- a bound on the walk, should the list ever be other than nginx's

local function wire(protocols)
    local out = {}
    for _, name in ipairs(protocols) do
        out[#out + 1] = string.char(#name) .. name
    end
    return table.concat(out)
end

-- Set the protocols on every marked context; returns how many contexts got each list.
function _M.install()
    local cycle = ffi.cast("amesh_ngx_cycle_head_t *", C.ngx_cycle)
    local cleanup_ctx = ffi.cast("void *", C.ngx_ssl_cleanup_ctx)
    local http, tcp = wire(_M.HTTP_PROTOCOLS), wire(_M.TCP_PROTOCOLS)
    local counts = { http = 0, tcp = 0 }
    local entry, seen = cycle.pool.cleanup, 0
    while entry ~= nil and seen < MAX_CLEANUPS do
        if entry.handler == cleanup_ctx and entry.data ~= nil then
            local ctx = ffi.cast("amesh_ngx_ssl_t *", entry.data).ctx
            if ctx ~= nil then
                local options = C.SSL_CTX_get_options(ctx)
                local protos, kind
                if bit.band(options, _M.MARKER) ~= 0 then
                    if bit.band(options, _M.HTTP_MARKER) ~= 0 then
                        protos, kind = http, "http"
                    else
                        protos, kind = tcp, "tcp"
                    end
                end
                -- SSL_CTX_set_alpn_protos returns 0 on success
                if protos and C.SSL_CTX_set_alpn_protos(ctx, protos, #protos) == 0 then
                    counts[kind] = counts[kind] + 1
                end
            end
        end
        entry, seen = entry.next, seen + 1
    end
    return counts
end

return _M
