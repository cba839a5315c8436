-- amesh-rbac: Envoy's RBAC filters (Istio AuthorizationPolicy: envoy.filters.http.rbac before the router,
-- envoy.filters.network.rbac before tcp_proxy) for APISIX, as sidecar_agent/translate/rbac.py translates
-- them, and the sidecar's fail-closed refusals (docs/translation.md, "Fail closed").
--
-- conf = { deny = "why" }                       -- refuse everything
--      | { filters = { {action = "ALLOW"|"DENY"|"LOG", name, policies = { {name, permissions, principals} } } } }
-- The filters run in order, as Envoy runs its RBAC filters: DENY refuses when a policy matches, ALLOW
-- refuses unless one matches, LOG only logs. A policy matches when one of its permissions and one of
-- its principals match. Match trees are evaluated in three-valued logic: a node the sidecar cannot
-- evaluate ({unknown = why}: JWT claims, a client address the front could not hand over, …) is neither true nor
-- false, and an undecided policy counts as matching in DENY and
-- as not matching in ALLOW: the sidecar never allows what Envoy would refuse.
--
-- HTTP: rewrite phase, before every other route plugin (fault-injection is 11000) as Envoy's RBAC filter
-- runs before fault and the router; refused -> 403 "RBAC: access denied". Stream: preread, before
-- amesh-passthrough; refused -> the connection is closed. Enabled by the generated config.yaml.

local core = require("apisix.core")
local ipmatcher = require("resty.ipmatcher")
local openssl_x509 = require("resty.openssl.x509")
local uri_sans = require("amesh.uri_sans")

local plugin_name = "amesh-rbac"
local is_http = ngx.config.subsystem == "http"
local UNKNOWN = "unknown" -- the third truth value
local ngx_re_find = ngx.re.find
local str_find = string.find
local str_lower = string.lower
local tonumber = tonumber
local type = type
local ipairs = ipairs

-- its schema is the JSON file beside this one (amesh/plugin_schema.lua)
local schema = require("amesh.plugin_schema").load(debug.getinfo(1, "S").source, plugin_name)

local _M = {
    version = 0.1,
    priority = 11500,
    name = plugin_name,
    schema = schema,
}

local function has_prefix(s, p)
    return #s >= #p and s:sub(1, #p) == p
end

local function has_suffix(s, p)
    return #s >= #p and (p == "" or s:sub(-#p) == p)
end

-- string matcher -> function(value) -> boolean
local function string_matcher(sm)
    if type(sm) ~= "table" then
        return nil, "string matcher must be an object"
    end
    local ic = sm.ignore_case == true
    local function norm(v)
        return ic and str_lower(v) or v
    end
    if type(sm.exact) == "string" then
        local want = norm(sm.exact)
        return function(v) return norm(v) == want end
    elseif type(sm.prefix) == "string" then
        local want = norm(sm.prefix)
        return function(v) return has_prefix(norm(v), want) end
    elseif type(sm.suffix) == "string" then
        local want = norm(sm.suffix)
        return function(v) return has_suffix(norm(v), want) end
    elseif type(sm.contains) == "string" then
        local want = norm(sm.contains)
        return function(v) return str_find(norm(v), want, 1, true) ~= nil end
    elseif type(sm.regex) == "string" then
        local re = "^(?:" .. sm.regex .. ")$" -- Envoy's safe_regex matches the whole value
        local _, _, err = ngx_re_find("", re, "jo")
        if err then
            return nil, "bad regex " .. sm.regex .. ": " .. err
        end
        return function(v) return ngx_re_find(v, re, "jo") ~= nil end
    end
    return nil, "unknown string matcher " .. core.json.encode(sm)
end

local function header_value(ctx, name)
    if name == ":method" then
        return ngx.req.get_method()
    elseif name == ":path" then
        return ngx.var.request_uri
    elseif name == ":authority" or name == "host" then
        return ngx.var.http_host
    elseif name == ":scheme" then
        return ngx.var.scheme
    end
    local value = ngx.req.get_headers(0)[name] -- 0: every header (a header past the 100th still counts)
    if type(value) == "table" then
        return table.concat(value, ",") -- Envoy joins repeated headers with ","
    end
    return value
end

-- The mTLS peer's SPIFFE id (the URI SAN of the client certificate the TLS listener verified against the
-- mesh root), or nil on a plaintext connection. Only plaintext reaches the inbound listeners without TLS:
-- amesh-mtls sends every TLS connection to the port's TLS listener (HTTP: its routes run there).
local peer_ids = require("resty.lrucache").new(256) -- client certificate PEM -> its URI SAN
local function peer_identity()
    local pem = ngx.var.ssl_client_raw_cert
    if not pem or pem == "" then
        return nil
    end
    local id = peer_ids:get(pem)
    if id == nil then
        id = uri_sans(openssl_x509.new(pem))[1] or false
        peer_ids:set(pem, id)
    end
    return id or nil
end

local compile

local function compile_list(list)
    if type(list) ~= "table" then
        return nil, "expected an array of nodes"
    end
    local out = {}
    for i, node in ipairs(list) do
        local fn, err = compile(node)
        if not fn then
            return nil, err
        end
        out[i] = fn
    end
    return out
end

-- Kleene or (decisive = true) / and (decisive = false): the decisive value ends it, else unknown taints
local function kleene(fns, ctx, decisive)
    local result = not decisive
    for _, fn in ipairs(fns) do
        local r = fn(ctx)
        if r == decisive then
            return decisive
        elseif r == UNKNOWN then
            result = UNKNOWN
        end
    end
    return result
end

local function any_of(fns, ctx)
    return kleene(fns, ctx, true)
end

local function all_of(fns, ctx)
    return kleene(fns, ctx, false)
end

local function cidr_matcher(cidr)
    local m, err = ipmatcher.new({ cidr })
    if not m then
        return nil, "bad CIDR " .. tostring(cidr) .. ": " .. tostring(err)
    end
    return m
end

-- node -> function(ctx) -> true | false | UNKNOWN
compile = function(node)
    if type(node) ~= "table" then
        return nil, "node must be an object"
    end
    if node.any == true then
        return function() return true end
    elseif node["and"] ~= nil or node["or"] ~= nil then
        local fns, err = compile_list(node["and"] or node["or"])
        if not fns then
            return nil, err
        end
        if node["and"] ~= nil then
            return function(ctx) return all_of(fns, ctx) end
        end
        return function(ctx) return any_of(fns, ctx) end
    elseif node["not"] ~= nil then
        local fn, err = compile(node["not"])
        if not fn then
            return nil, err
        end
        return function(ctx)
            local r = fn(ctx)
            if r == UNKNOWN then
                return UNKNOWN
            end
            return not r
        end
    elseif node.header ~= nil then
        local name = str_lower(tostring(node.header))
        local match, err
        if node.string ~= nil then
            match, err = string_matcher(node.string)
            if not match then
                return nil, err
            end
        elseif type(node.present) ~= "boolean" then
            return nil, "header node needs string or present"
        end
        local invert, missing_empty, present = node.invert == true, node.missing_empty == true, node.present
        return function(ctx)
            if not is_http then
                return UNKNOWN
            end
            local value = header_value(ctx, name)
            if value == nil and missing_empty then
                value = ""
            end
            local r
            if match then
                if value == nil then
                    return false -- Envoy: a missing header matches no value, inverted or not
                end
                r = match(value)
            else
                r = (value ~= nil) == present
            end
            if invert then
                return not r
            end
            return r
        end
    elseif node.path ~= nil then
        local match, err = string_matcher(node.path)
        if not match then
            return nil, err
        end
        return function(ctx)
            if not is_http then
                return UNKNOWN
            end
            -- the normalised path without the query (nginx: dot segments resolved, percent-decoded)
            return match(ngx.var.uri or "")
        end
    elseif node.port ~= nil then
        local want = tonumber(node.port)
        return function(ctx)
            local port = tonumber(ctx.var.original_dst_port)
            if not port then
                return UNKNOWN
            end
            return port == want
        end
    elseif node.port_range ~= nil then
        local first, last = tonumber(node.port_range[1]), tonumber(node.port_range[2])
        if not first or not last then
            return nil, "port_range needs [start, end)"
        end
        return function(ctx)
            local port = tonumber(ctx.var.original_dst_port)
            if not port then
                return UNKNOWN
            end
            return port >= first and port < last
        end
    elseif node.source_ip ~= nil or node.remote_ip ~= nil or node.destination_ip ~= nil then
        local m, err = cidr_matcher(node.source_ip or node.remote_ip or node.destination_ip)
        if not m then
            return nil, err
        end
        local address
        if node.destination_ip ~= nil then
            address = function(ctx) return ctx.var.original_dst_addr end
        elseif node.source_ip ~= nil then
            -- the client's connection (Envoy's direct_remote_ip), also behind the inbound front (the hook)
            address = function(ctx) return ctx.var.amesh_client_addr end
        else
            -- Envoy's remote_ip on a sidecar's inbound (use_remote_address false, no trusted hops): the last
            -- X-Forwarded-For address when there is one, else the client's connection
            address = function(ctx)
                local xff = is_http and ctx.var.http_x_forwarded_for
                if xff then
                    local last = xff:match("([^,%s]+)%s*$")
                    if last then
                        return last
                    end
                end
                return ctx.var.amesh_client_addr
            end
        end
        return function(ctx)
            local addr = address(ctx)
            if not addr then
                return UNKNOWN
            end
            return m:match(addr) and true or false
        end
    elseif node.authenticated ~= nil then
        local match = function() return true end -- {}: any authenticated peer
        if next(node.authenticated) ~= nil then
            local err
            match, err = string_matcher(node.authenticated)
            if not match then
                return nil, err
            end
        end
        return function()
            local id = peer_identity()
            if not id then
                return false -- plaintext: no peer principal, as in Envoy
            end
            return match(id)
        end
    elseif node.unknown ~= nil then
        return function() return UNKNOWN end
    end
    return nil, "unknown match node " .. core.json.encode(node)
end

local function compile_conf(conf)
    if conf.deny then
        return { deny = conf.deny }
    end
    local filters = {}
    for i, f in ipairs(conf.filters or {}) do
        local policies = {}
        for j, p in ipairs(f.policies or {}) do
            local permissions, err = compile_list(p.permissions)
            if not permissions then
                return nil, "policy " .. tostring(p.name) .. " permissions: " .. err
            end
            local principals
            principals, err = compile_list(p.principals)
            if not principals then
                return nil, "policy " .. tostring(p.name) .. " principals: " .. err
            end
            policies[j] = { name = p.name, permissions = permissions, principals = principals }
        end
        filters[i] = { action = f.action, name = f.name or f.action, policies = policies }
    end
    return { filters = filters }
end

function _M.check_schema(conf)
    local ok, err = core.schema.check(schema, conf)
    if not ok then
        return false, err
    end
    local compiled
    compiled, err = compile_conf(conf)
    if not compiled then
        return false, err
    end
    return true
end

local cache = setmetatable({}, { __mode = "k" })

-- true, or false and why
function _M.evaluate(conf, ctx)
    local compiled = cache[conf]
    if not compiled then
        local err
        compiled, err = compile_conf(conf)
        if not compiled then
            return false, "invalid configuration: " .. tostring(err) -- fail closed
        end
        cache[conf] = compiled
    end
    if compiled.deny then
        return false, compiled.deny
    end
    for _, f in ipairs(compiled.filters) do
        local matched, undecided
        for _, p in ipairs(f.policies) do
            local perm = any_of(p.permissions, ctx)
            local r = perm
            if perm ~= false then
                local princ = any_of(p.principals, ctx)
                if princ == false then
                    r = false
                elseif princ == UNKNOWN then
                    r = UNKNOWN
                end
            end
            if r == true then
                matched = p.name
                break
            elseif r == UNKNOWN and not undecided then
                undecided = p.name
            end
        end
        if f.action == "DENY" then
            if matched then
                return false, "DENY policy " .. matched .. " matched"
            elseif undecided then
                return false, "DENY policy " .. undecided .. " cannot be decided here (fail closed)"
            end
        elseif f.action == "ALLOW" then
            if not matched then
                return false, "no ALLOW policy of " .. f.name .. " matched"
                    .. (undecided and (" (" .. undecided .. " cannot be decided here)") or "")
            end
        elseif matched or undecided then -- LOG (Istio AUDIT)
            core.log.warn("amesh-rbac audit: policy ", matched or undecided,
                          matched and " matched" or " may match", " (", f.name, ")")
        end
    end
    return true
end

function _M.rewrite(conf, ctx)
    local ok, why = _M.evaluate(conf, ctx)
    if not ok then
        core.log.warn("amesh-rbac denied ", ngx.req.get_method(), " ", ngx.var.uri, ": ", why)
        core.response.set_header("Content-Type", "text/plain")
        return 403, "RBAC: access denied"
    end
end

function _M.preread(conf, ctx)
    if ctx.amesh_tls_forwarded then
        return -- amesh-mtls sent it to the port's TLS listener, whose route evaluates the same policy
    end
    local ok, why = _M.evaluate(conf, ctx)
    if not ok then
        core.log.warn("amesh-rbac closed the connection from ", ctx.var.remote_addr, ": ", why)
        return 503 -- a stream plugin's code ends the session
    end
end

return _M
