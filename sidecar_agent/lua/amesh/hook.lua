-- APISIX `lua_module_hook` of the sidecar (conf/config.yaml: apisix.lua_module_hook: "amesh.hook").
--
-- Loaded in init_by_lua of both subsystems. The thin APISIX glue around amesh.origdst:
--   http:   variables original_dst_addr / original_dst_port, which the translated routes match
--           (`vars: [["original_dst_port", "==", 9080]]`);
--   stream: the same two, and server_addr / server_port overridden with the original destination,
--           so unmodified stream_routes (which only match server_addr/server_port) route captured
--           connections by where the client was going. This relies on APISIX looking registered
--           variables up before ngx.var: re-test it on every APISIX upgrade.
-- Outbound HTTP reaches per-port internal listeners through the stream front on 15001 (see
-- docs/data-path.md); there the original port is the one the listener stands for, read from
-- plugin_attr.amesh.http_ports ({"<internal port>": {port, direction}}) of conf/config.yaml
-- (written by sidecar_agent/apisix/datapath.py).

require("apisix") -- before apisix.core, or APISIX refuses to start (jit stack size)
local core = require("apisix.core")
local origdst = require("amesh.origdst")

local subsystem = ngx.config.subsystem
local attr = (core.config.local_conf().plugin_attr or {}).amesh or {}

-- internal HTTP listener port -> {port = original port, direction = "inbound"|"outbound"}
local internal_ports = {}
for listen_port, entry in pairs(attr.http_ports or {}) do
    internal_ports[tostring(listen_port)] = { port = tonumber(entry.port), direction = entry.direction }
end
local inbound_port = tostring(attr.inbound_port or 15006)
-- stream TLS listener port -> the pod port whose inbound mTLS it terminates (amesh.mtls_server)
local tls_ports = {}
for listen_port, port in pairs(attr.tls_ports or {}) do
    tls_ports[tostring(listen_port)] = tonumber(port)
end

-- our loopback listeners behind the inbound front: its inbound HTTP listeners and the mTLS ones
local behind_front = {}
for port, mapped in pairs(internal_ports) do
    if mapped.direction == "inbound" then
        behind_front[port] = true
    end
end
for port in pairs(tls_ports) do
    behind_front[port] = true
end
local inbound_client = require("amesh.inbound_client")
if not ngx.shared[inbound_client.DICT] then
    ngx.log(ngx.ERR, "amesh: no shared dict ", inbound_client.DICT, ": the client address behind the inbound ",
            "front stays unknown")
end

-- API-driven standalone mode: the once-a-second poll reads a version, not the whole configuration
local standalone_poll = require("amesh.standalone_poll")
if ngx.shared[standalone_poll.DICT] then
    local ok, err = standalone_poll.install()
    if not ok then
        ngx.log(ngx.ERR, "amesh: ", err)
    end
end

local function original()
    local addr, port = origdst.get()
    if addr then
        return addr, port
    end
    -- not NATed: an internal listener fed by the stream front knows only its port
    local mapped = internal_ports[ngx.var.server_port]
    if mapped then
        return nil, mapped.port
    end
    return nil, nil -- fail closed: no route keyed on the original destination matches
end

-- "inbound" / "outbound": inbound routes require it, so a request never crosses directions
core.ctx.register_var("amesh_direction", function()
    local server_port = ngx.var.server_port
    local mapped = internal_ports[server_port]
    if mapped then
        return mapped.direction
    end
    return (server_port == inbound_port or tls_ports[server_port]) and "inbound" or "outbound"
end)

core.ctx.register_var("original_dst_addr", function()
    local addr = original()
    return addr
end)
core.ctx.register_var("original_dst_port", function()
    local _, port = original()
    return port
end)

-- The inbound client's address, where our policies need it (amesh-rbac source_ip): on the front (15006)
-- the connection's own; on a listener behind it the one the front handed over (nil when unknown); nil
-- elsewhere (outbound: the app's own address, no inbound policy applies).
core.ctx.register_var("amesh_client_addr", function()
    local server_port = ngx.var.server_port
    if server_port == inbound_port then
        return ngx.var.remote_addr
    end
    if behind_front[server_port] then
        if subsystem == "http" then
            return ngx.ctx.amesh_client -- looked up once per request, before APISIX's access phase
        end
        local ip = inbound_client.client()
        return ip
    end
    return nil
end)

if subsystem == "stream" then
    -- a TLS listener's connections are not NATed: its routes match the listener's own address and port
    local function listener_own(name)
        if tls_ports[ngx.var.server_port] then
            return ngx.var[name]
        end
        return nil
    end
    core.ctx.register_var("server_addr", function()
        local addr = origdst.get()
        return addr or listener_own("server_addr")
    end)
    core.ctx.register_var("server_port", function()
        local addr, port = origdst.get()
        if addr then
            return port
        end
        return listener_own("server_port") -- on failure origdst's second value is the reason, not a port
    end)
end

-- Istio mutual TLS upstream (amesh.mtls): once APISIX's access phase has picked the upstream, the
-- workload certificate and the mesh root for it. nginx.conf calls apisix.http_access_phase through
-- this very module table, so the wrapper is what runs.
-- the workload certificate's files, for both mTLS directions (amesh.workload_cert)
if attr.mtls_dir then
    require("amesh.workload_cert").configure(attr.mtls_dir)
end

-- Never plaintext (or unverified TLS) where istiod asks for Istio mTLS: without a workload certificate
-- (no CA configured) an HTTP request to such an upstream gets 502 and a TCP connection to one is closed;
-- with one, a TCP connection goes through our TLS origin server (amesh.mtls_origin), as APISIX's own
-- stream servers cannot verify a server's identity: docs/data-path.md.
-- The picked node (`host`, `port`) of `conf` carries `metadata.tlsMode: istio` (translate/endpoint.py marks
-- a sidecar's endpoints so when only some of a service's endpoints have one).
local function marked_istio(conf, host, port)
    for _, node in ipairs(conf.nodes or {}) do
        if node.port == port and (node.host == host or node.host == "[" .. host .. "]") then
            return node.metadata ~= nil and node.metadata.tlsMode == "istio"
        end
    end
    return false
end

-- The labels of the upstream APISIX picked when the connection to its picked node (`host`, `port`) is Istio
-- mTLS: every node's (`amesh.tls: istio-mutual`) or that node's (`istio-per-endpoint`, auto-mTLS with some
-- endpoints only); else nil.
local function istio_mutual_labels(host, port)
    local api_ctx = ngx.ctx.api_ctx
    local conf = api_ctx and (api_ctx.upstream_conf or api_ctx.matched_upstream)
    local labels = conf and conf.labels
    local mode = labels and labels["amesh.tls"]
    if mode == "istio-mutual" then
        return labels
    end
    if mode == "istio-per-endpoint" and host and marked_istio(conf, host, port) then
        return labels, true
    end
    return nil
end

-- The same for the node APISIX's access (HTTP) or preread (stream) phase picked.
local function picked_mutual_labels()
    local picked = ngx.ctx.api_ctx and ngx.ctx.api_ctx.picked_server
    return istio_mutual_labels(picked and picked.host, picked and picked.port)
end

if subsystem == "http" then
    local apisix = require("apisix")
    local apisix_client = require("resty.apisix.client")
    -- the hosts of a service share one sub-router (amesh.host_routers)
    local router_conf = core.config.local_conf().apisix.router or {}
    if router_conf.http == "radixtree_host_uri" then
        require("amesh.host_routers").install()
    end
    -- behind the inbound front: the client's address as $remote_addr for every plugin and log (as the real-ip
    -- plugin does it), before APISIX reads it; nil when the front could not hand it over
    local original_access = apisix.http_access_phase
    local function access_phase(...)
        if behind_front[ngx.var.server_port] then
            local ip, port = inbound_client.client()
            if ip then
                ngx.ctx.amesh_client = ip
                local ok, err = apisix_client.set_real_ip(ip, port)
                if not ok then
                    ngx.log(ngx.WARN, "amesh: client address ", ip, " not set: ", err)
                end
            end
        end
        return original_access(...)
    end
    apisix.http_access_phase = access_phase
    if attr.mtls_dir then
        -- Istio's ALPN on the TLS contexts that dial Istio mTLS (HTTP and TCP), once per worker (amesh.alpn)
        local init_worker = apisix.http_init_worker
        apisix.http_init_worker = function(...)
            local counts = require("amesh.alpn").install()
            if counts.http == 0 or counts.tcp == 0 then
                ngx.log(ngx.ERR, "amesh: Istio ALPN not set on every upstream TLS context (http: ", counts.http,
                        ", tcp: ", counts.tcp, "): PERMISSIVE Envoy servers will not see Istio mTLS")
            end
            return init_worker(...)
        end
        local mtls = require("amesh.mtls")
        apisix.http_access_phase = function(...)
            access_phase(...)
            local labels, per_endpoint = picked_mutual_labels()
            if per_endpoint then
                ngx.var.upstream_scheme = "https" -- this node of a plaintext upstream has a sidecar
            end
            mtls.after_access(labels)
        end
    else
        apisix.http_access_phase = function(...)
            access_phase(...)
            if picked_mutual_labels() then
                ngx.log(ngx.ERR, "amesh: upstream requires Istio mTLS and this sidecar has no workload ",
                        "certificate (no CA configured): refused")
                return ngx.exit(502)
            end
        end
    end
else
    local apisix = require("apisix")
    local mtls_origin = attr.mtls_dir and attr.tcp_mtls_port and require("amesh.mtls_origin")
    local origin_port = tonumber(attr.tcp_mtls_port)
    local balancer_phase = apisix.stream_balancer_phase
    apisix.stream_balancer_phase = function(...)
        balancer_phase(...)
        if ngx.var.server_port == inbound_port then
            return inbound_client.record(behind_front)
        end
        local api_ctx = ngx.ctx.api_ctx
        local labels = mtls_origin and api_ctx and istio_mutual_labels(api_ctx.balancer_ip, api_ctx.balancer_port)
        if labels then
            local ok, err = mtls_origin.divert(labels, origin_port)
            if not ok then
                ngx.log(ngx.ERR, "amesh: TCP upstream requires Istio mTLS: ", err, ": connection closed")
                return ngx.exit(ngx.ERROR)
            end
        end
    end
    local log_phase = apisix.stream_log_phase
    apisix.stream_log_phase = function(...)
        inbound_client.release()
        return log_phase(...)
    end
    if not mtls_origin then
        local preread_phase = apisix.stream_preread_phase
        apisix.stream_preread_phase = function(...)
            preread_phase(...)
            if picked_mutual_labels() then
                ngx.log(ngx.ERR, "amesh: TCP upstream requires Istio mTLS and this sidecar has no workload ",
                        "certificate (no CA configured): connection closed (never sent in plaintext)")
                return ngx.exit(ngx.ERROR)
            end
        end
    end
end

-- Inbound mTLS (amesh.mtls_server): APISIX's TLS phases on our TLS listeners only (HTTP ones for the pod's
-- HTTP ports, stream ones for its TCP ports); every other TLS handshake stays APISIX's.
if attr.mtls_dir and next(tls_ports) then
    local mtls_server = require("amesh.mtls_server")
    local apisix = require("apisix")
    local client_hello, certificate = apisix.ssl_client_hello_phase, apisix.ssl_phase
    -- what APISIX's HTTP access phase reads of the `ssls` object a handshake matched: none, no client rules
    local NO_SSL_OBJECT = { value = {} }
    apisix.ssl_client_hello_phase = function(...)
        if not mtls_server.ours(tls_ports) then
            return client_hello(...)
        end
    end
    apisix.ssl_phase = function(...)
        if not mtls_server.ours(tls_ports) then
            return certificate(...)
        end
        local ok, err = mtls_server.certificate()
        if not ok then
            ngx.log(ngx.ERR, "amesh inbound mTLS: no certificate to serve: ", err)
            return ngx.exit(ngx.ERROR)
        end
        if subsystem == "http" then
            ngx.ctx.matched_ssl = NO_SSL_OBJECT
        end
    end
    if subsystem == "stream" then
        -- APISIX looks every TLS stream connection's SNI up in its `ssls` (and logs an error when none has
        -- it): on our listeners there is nothing to look up, the SNI is Istio's outbound_… name
        local apisix_ssl = require("apisix.ssl")
        local server_name = apisix_ssl.server_name
        apisix_ssl.server_name = function(...)
            local ok, port = pcall(function() return ngx.var.server_port end) -- no ngx.var in the TLS phases
            if ok and tls_ports[port] then
                return nil
            end
            return server_name(...)
        end
    end
end
