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

local _M = {
    MAX_CANDIDATES = 16, -- lists that share a first route but differ later: past this, built unshared
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
    host_uri.match = function(api_ctx)
        local user_routes = host_uri.user_routes
        local _, service_version = services.services()
        if user_routes == nil or (user_routes.conf_version == routes_version
                                  and service_version == services_version) then
            return match(api_ctx)
        end
        memo, _M.stats = {}, { lists = 0, built = 0 }
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
