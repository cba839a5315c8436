-- One sub-router per distinct route list, not per host, in APISIX's radixtree_host_uri router (docs/agent.md,
-- "APISIX at scale").
--
-- radixtree_host_uri gives every distinct host its own resty.radixtree over the routes listing that host,
-- and a radixtree compiles each route it holds (its vars through lua-resty-expr, its paths). Istio lists a
-- service under ~6 names (short name, .ns, .ns.svc, …, FQDN, ClusterIP), so each worker compiled every
-- outbound route 6 times: at 10,000 services 60,000 sub-routers, most of a worker's memory and of a
-- change's time. The 6 hosts of a service hold the very same route objects in the same order, and a
-- radixtree is a function of that list: while radixtree_host_uri builds, `apisix.utils.router.new` hands
-- out one radixtree per identical list (the same route tables, in order). Routing is unchanged: each host
-- keeps its own entry in the host router, now pointing at a shared sub-router.
--
-- Identity, not equality, decides: two lists share only when every element is the same table, so
-- nothing is compared deeply and nothing outside one build is kept (the memo lives for one build).
--
-- Canonical names. The host router itself still held one entry per name (60,000 at 10,000 services).
-- Where a set of names is listed by exactly the same routes and by no others (Istio's names of one
-- service on one port), the routes keep one of them (the first in byte order) before the router builds,
-- and a request for another name of the set is matched as if for that one: its routes are the same, so
-- the outcome is. `host` reads the original name again right after matching. A set is left as it is when
-- any of its names is listed by another route too, when a wildcard could match one of them (wildcards
-- are tried after the exact name, and would see another name), or when a route takes its hosts from a
-- service. The original `hosts` are kept aside (APISIX's own filter rewrites them in place too: it
-- lower-cases them), so each build plans from them.

local _M = {
    MAX_CANDIDATES = 16, -- lists that share a first route but differ later: past this, built unshared
    MAX_WILDCARDS = 64, -- every name is checked against every wildcard: past this, no canonical names
    stats = { lists = 0, built = 0 }, -- the last build's sub-router requests and radixtrees made (tests)
}

local function same(a, b)
    local n = #a
    if n ~= #b then
        return false
    end
    for i = 1, n do
        if a[i] ~= b[i] then
            return false
        end
    end
    return true
end

-- routes: APISIX route items ({value = {hosts = …}}), with their original hosts in `original[value]`
-- (false: none).
-- Returns name -> canonical name, and value -> the hosts list the route keeps (only for routes whose
-- set is collapsed). Pure: tests/translate/test_real_router.py checks it through the real router.
function _M.plan(routes, original)
    local set_of = {}      -- name -> the key of the one set listing it, or false when two do
    local wildcards = {}   -- suffixes of wildcard names ("*.ns" -> ".ns")
    local members = {}     -- key -> sorted names
    local keys = {}        -- value -> key
    for _, route in ipairs(routes) do
        local value = type(route) == "table" and route.value
        if value and (value.status == nil or value.status == 1) then
            if value.service_id and not original[value] then
                return {}, {} -- hosts from a service: not planned at all
            end
            local hosts = original[value] or nil
            if hosts and #hosts > 1 then
                local names = {}
                for i, name in ipairs(hosts) do
                    names[i] = name
                end
                table.sort(names)
                local key = table.concat(names, "\0")
                keys[value], members[key] = key, names
                for _, name in ipairs(names) do
                    if set_of[name] == nil then
                        set_of[name] = key
                    elseif set_of[name] ~= key then
                        set_of[name] = false
                    end
                end
            elseif hosts and hosts[1] then
                set_of[hosts[1]] = false -- a route listing the name alone
            elseif value.host then
                set_of[value.host] = false
            end
            for _, name in ipairs(hosts or { value.host }) do
                if name:byte(1) == 42 then -- "*"
                    wildcards[#wildcards + 1] = name:sub(2)
                end
            end
        end
    end
    local alias, kept, collapsible = {}, {}, {}
    if #wildcards > _M.MAX_WILDCARDS then
        return alias, kept
    end
    for key, names in pairs(members) do
        local ok = true
        for _, name in ipairs(names) do
            if set_of[name] ~= key or name:byte(1) == 42 then
                ok = false
                break
            end
            for _, suffix in ipairs(wildcards) do
                if #name > #suffix and name:sub(-#suffix) == suffix then
                    ok = false
                    break
                end
            end
            if not ok then
                break
            end
        end
        if ok then
            collapsible[key] = { names[1] }
            for i = 2, #names do
                alias[names[i]] = names[1]
            end
        end
    end
    for value, key in pairs(keys) do
        kept[value] = collapsible[key]
    end
    return alias, kept
end

function _M.install()
    local host_uri = require("apisix.http.router.radixtree_host_uri")
    local utils_router = require("apisix.utils.router")
    local services = require("apisix.http.service")
    local new = utils_router.new

    local memo -- first route table -> { {list, radixtree}, … }, only while radixtree_host_uri may build
    utils_router.new = function(routes, ...)
        local first = memo and type(routes) == "table" and routes[1]
        if not first then
            return new(routes, ...)
        end
        local stats = _M.stats
        stats.lists = stats.lists + 1
        local candidates = memo[first]
        if candidates then
            for _, candidate in ipairs(candidates) do
                if same(candidate[1], routes) then
                    return candidate[2]
                end
            end
        else
            candidates = {}
            memo[first] = candidates
        end
        local built, err = new(routes, ...)
        if built then
            stats.built = stats.built + 1
            if #candidates < _M.MAX_CANDIDATES then
                candidates[#candidates + 1] = { routes, built }
            end
        end
        return built, err
    end

    -- radixtree_host_uri rebuilds when the routes' or the services' version changed: only then is the
    -- memo on (a request otherwise pays one comparison)
    local match = host_uri.match
    local routes_version, services_version
    local original = setmetatable({}, { __mode = "k" }) -- route value -> its hosts as pushed (false: none)
    local aliases = {}

    -- a name of a collapsed set is matched as its canonical name; `host` is the request's again after
    local matching = host_uri.matching
    host_uri.matching = function(api_ctx)
        local var = api_ctx.var
        local host = var.host
        local canonical = host and aliases[host]
        if not canonical then
            return matching(api_ctx)
        end
        var._cache.host = canonical
        local ok, matched = pcall(matching, api_ctx)
        var._cache.host = host
        if not ok then
            error(matched, 0)
        end
        local record = api_ctx.curr_req_matched
        if record and record._host == canonical then
            record._host = host
        end
        return matched
    end
    host_uri.match = function(api_ctx)
        local user_routes = host_uri.user_routes
        local _, service_version = services.services()
        if user_routes == nil or (user_routes.conf_version == routes_version
                                  and service_version == services_version) then
            return match(api_ctx)
        end
        memo, _M.stats = {}, { lists = 0, built = 0 }
        local values = user_routes.values or {}
        for _, route in ipairs(values) do
            local value = type(route) == "table" and route.value
            if value and original[value] == nil then
                original[value] = value.hosts or false
            end
        end
        local planned, alias, kept = pcall(_M.plan, values, original)
        if not planned then -- routing stays APISIX's own: every name its entry
            ngx.log(ngx.ERR, "amesh: no canonical host names: ", alias)
            alias, kept = {}, {}
        end
        aliases = alias
        for _, route in ipairs(values) do -- this version's routes: older ones are routed no more
            local value = type(route) == "table" and route.value
            local hosts = value and original[value]
            if hosts then
                value.hosts = kept[value] or hosts
            end
        end
        _M.stats.aliases = 0
        for _ in pairs(aliases) do
            _M.stats.aliases = _M.stats.aliases + 1
        end
        local ok, matched = pcall(match, api_ctx)
        memo = nil
        if not ok then
            error(matched, 0)
        end
        routes_version, services_version = user_routes.conf_version, service_version
        return matched
    end
    return true
end

return _M
