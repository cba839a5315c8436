-- API-driven standalone mode without the once-a-second decode of the whole configuration (docs/agent.md,
-- "APISIX at scale").
--
-- APISIX 3.18 (admin/standalone.lua) keeps the pushed configuration as one JSON string in the
-- `standalone-config` shared dict, and every Lua VM (each worker's http and stream VM, the privileged
-- agent) polls it once a second: get_config() copies and decodes the *whole* string only to read its
-- X-Last-Modified field. At 10,000 services (66 MB) one decode costs ~0.85 s and its garbage ~0.3 s, so
-- every VM spends all its time polling and never serves; at 4,000 services it takes ~40 % of the CPU.
--
-- install() puts a version beside the configuration and lets the poll through only when it changed:
--   * writer: the Admin API worker posts the update event right after it stored the configuration; the
--     post stores a new version (unique per nginx lifetime: time, pid, count);
--   * readers: the poll's callback, and the update event's handler (http VMs), run only for a version
--     they have not loaded. The version is read *before* the callback reads the configuration, so a
--     configuration stored meanwhile is at least as new as the version noted: nothing is ever skipped.
--     No version (never pushed since start, or evicted) lets every poll through, as stock APISIX does.
-- The privileged agent (both its VMs) loads a configuration only once no newer one came for AGENT_DELAY
-- seconds: it serves no traffic, and its one use of routes and upstreams in standalone mode is the
-- Prometheus exporter's `upstream_status` (the health checkers of upstreams with `checks`), which may lag
-- that long. Loading at once made it a fifth and sixth Lua VM decoding and validating every configuration
-- while the workers' requests waited for theirs, on 2 CPUs.
-- A VM loads the stored JSON only when nothing smaller will do (each decode of it is ~0.6-0.9 s at 10,000
-- services, and a worker's http and stream VMs share one thread):
--   * the stream VMs load the stream share (stream_view), which the Admin API worker stores beside the
--     configuration under the same version: every type but `routes`, and only the upstreams something other
--     than a route names (stream routes, services). HTTP routes and their upstreams are never used there;
--   * the Admin API worker's own http VM loads the table it has just stored instead of decoding it again.
--     It is the table the JSON was encoded from; cjson keeps 14 significant digits of a number, so only a
--     number with more could differ from what the other VMs decode (the agent's documents have none).
-- The Admin API's HEAD (what the agent asks every few seconds: does APISIX still hold what it pushed?)
-- answers from the stored configuration's metadata, kept beside it, instead of decoding the whole of it to
-- read two fields (~0.9 s at 10,000 services, on a worker that serves requests).
-- The poll runs through a local of admin/standalone.lua (`timer_every`), replaced by its upvalue, the
-- stored table is taken from another (`update_and_broadcast_config`, an upvalue of `update`) and HEAD is a
-- third (`head`, an upvalue of `run`): when a future APISIX renames them, install() says so and stock
-- behaviour stays (the real-APISIX tests fail then).

local _M = {
    DICT = "standalone-config",
    VERSION_KEY = "amesh:config-version",
    STREAM_KEY = "amesh:stream-config", -- "<version>\n<JSON of stream_view>"
    LOCK_KEY = "amesh:store-lock", -- held while the Admin API worker stores a configuration
    META_KEY = "amesh:config-meta", -- "<version>\n<X-Last-Modified>\n<X-Digest>" of the stored configuration
    EVENT = "standalone-api-configuration-update", -- admin/standalone.lua EVENT_UPDATE
    AGENT_DELAY = 10, -- seconds the privileged agent waits for a version to settle before loading it
    -- this VM's loads: of its own stored table, of the stream share, of the stored JSON (stock)
    stats = { own = 0, share = 0, stock = 0 },
}

local function upvalue_index(fn, name)
    local i = 1
    while true do
        local found = debug.getupvalue(fn, i)
        if found == nil then
            return nil
        end
        if found == name then
            return i
        end
        i = i + 1
    end
end

local function upvalue(fn, name) -- the value and its index, or nothing
    local index = fn and upvalue_index(fn, name)
    if index then
        return select(2, debug.getupvalue(fn, index)), index
    end
end

local function names_upstreams(value, into)
    for key, item in pairs(value) do
        if key == "upstream_id" and (type(item) == "string" or type(item) == "number") then
            into[tostring(item)] = true
        elseif type(item) == "table" then
            names_upstreams(item, into)
        end
    end
end

-- What the stream subsystem of a configuration uses: all but `routes`, and of the upstreams only those named
-- by anything but a route. The upstreams' version is the sum of every other type's (all only ever go up), so
-- it moves whenever the set kept may have changed, and not when only routes did.
function _M.stream_view(config)
    local view, named, version = {}, {}, 0
    for key, value in pairs(config) do
        if key ~= "routes" and key ~= "upstreams" then
            view[key] = value
            if type(value) == "table" then
                names_upstreams(value, named)
            end
        end
        if key ~= "routes_conf_version" and type(value) == "number" and key:sub(-13) == "_conf_version" then
            version = version + value
        end
    end
    local upstreams = {}
    for _, upstream in ipairs(config.upstreams or {}) do
        if type(upstream) == "table" and named[tostring(upstream.id)] then
            upstreams[#upstreams + 1] = upstream
        end
    end
    if #upstreams > 0 then
        view.upstreams = upstreams
    end
    view.upstreams_conf_version = version
    return view
end

function _M.install()
    local dict = ngx.shared[_M.DICT]
    if not dict then
        return false, "no shared dict " .. _M.DICT .. " (not API-driven standalone mode)"
    end
    local standalone = require("apisix.admin.standalone")
    local events = require("apisix.events")
    local json = require("apisix.core.json")
    local index = upvalue_index(standalone.init_worker, "timer_every")
    if not index then
        return false, "apisix.admin.standalone.init_worker has no upvalue timer_every: every Lua VM decodes "
            .. "the whole configuration once a second"
    end
    local problems = {} -- what is left stock: the gate itself works without them
    local stream = ngx.config.subsystem == "stream"

    -- the Admin API worker: the table being stored (while update_and_broadcast_config runs), then the one
    -- last stored with its version, for this VM's own load
    local storing, stored, stored_version
    local update = upvalue(standalone.run, "update")
    local broadcast, broadcast_index = upvalue(update, "update_and_broadcast_config")
    if broadcast then
        local resty_lock = require("resty.lock")
        debug.setupvalue(update, broadcast_index, function(config, ...)
            -- Pushes handled by two workers at once would interleave their writes (configuration, share,
            -- version), and the version last written could then name the other's share or own table: one at
            -- a time. APISIX's own race (both computing from the same previous configuration) stays.
            local lock = resty_lock:new(_M.DICT, { timeout = 60, exptime = 60 })
            local taken, lock_err = lock:lock(_M.LOCK_KEY)
            if taken then
                storing = config
            else -- every VM then loads the stored JSON: consistent, stock speed
                ngx.log(ngx.ERR, "amesh: configuration stored without its stream share: ", lock_err)
            end
            local ok, result, err = pcall(broadcast, config, ...)
            storing = nil
            if taken then
                lock:unlock()
            end
            if not ok then
                error(result, 0)
            end
            return result, err
        end)
    else
        problems[#problems + 1] = "apisix.admin.standalone's update has no upvalue update_and_broadcast_config: "
            .. "every Lua VM decodes the whole configuration"
    end

    local head, head_index = upvalue(standalone.run, "head")
    if head then
        local core = require("apisix.core")
        debug.setupvalue(standalone.run, head_index, function(ctx)
            -- the metadata of the version stored last, while the configuration is still there
            local meta, version = dict:get(_M.META_KEY), dict:get(_M.VERSION_KEY)
            local at = meta and version and meta:find("\n", 1, true)
            if at and meta:sub(1, at - 1) == version and dict:ttl("config") then
                local modified, digest = meta:match("^([^\n]*)\n(.*)$", at + 1)
                core.response.set_header("X-Last-Modified", modified)
                core.response.set_header("X-Digest", digest)
                return core.response.exit(200)
            end
            return head(ctx)
        end)
    else
        problems[#problems + 1] = "apisix.admin.standalone.run has no upvalue head: HEAD decodes the whole "
            .. "configuration"
    end

    local posted = 0
    local post = events.post
    events.post = function(self, source, ...)
        if source == _M.EVENT then
            posted = posted + 1
            local version = ngx.now() .. "/" .. ngx.worker.pid() .. "/" .. posted
            stored, stored_version = nil, nil
            -- the stream share first: a VM that reads this version finds the share of it (or a newer one,
            -- which it then ignores)
            local text = storing and json.encode(_M.stream_view(storing))
            local ok, err = false, "no configuration table"
            if text then
                ok, err = dict:set(_M.STREAM_KEY, version .. "\n" .. text)
            end
            if ok then
                ok, err = dict:set(_M.META_KEY, table.concat({ version, tostring(storing["X-Last-Modified"]),
                                                               tostring(storing["X-Digest"]) }, "\n"))
            end
            if not ok then
                -- the stream VMs decode the whole configuration, HEAD too, as stock APISIX
                dict:delete(_M.STREAM_KEY)
                dict:delete(_M.META_KEY)
                if storing then
                    ngx.log(ngx.ERR, "amesh: stream share or metadata of the configuration not stored: ", err)
                end
            end
            ok, err = dict:set(_M.VERSION_KEY, version)
            if ok then
                if storing then
                    stored, stored_version = {}, version -- the handler strips metadata keys in place
                    for key, value in pairs(storing) do
                        stored[key] = value
                    end
                end
            else -- every poll then decodes, as stock APISIX does: slow, never stale
                ngx.log(ngx.ERR, "amesh: configuration version not stored: ", err)
                dict:delete(_M.VERSION_KEY)
            end
        end
        return post(self, source, ...)
    end

    -- this VM's table of `version`, when it has one smaller or nearer than the stored JSON
    local function own(version)
        local config = stored_version == version and stored
        stored, stored_version = nil, nil -- used once; one of an older version is never used (nor kept)
        if config then
            return config, "own"
        end
        if stream then
            local share = dict:get(_M.STREAM_KEY)
            local cut = share and share:find("\n", 1, true)
            if cut and share:sub(1, cut - 1) == version then
                return json.decode(share:sub(cut + 1)), "share"
            end
        end
    end

    -- one VM's view: the version its poll or event handler last loaded
    local loaded, load
    local pending, since -- the privileged agent: the version it waits to load, seen first at `since`
    local process_type = require("ngx.process").type
    local function gated(callback)
        return function(...)
            local version = dict:get(_M.VERSION_KEY)
            if version ~= nil and version == loaded then
                return
            end
            if version ~= nil and process_type() == "privileged agent" then
                local now = ngx.now()
                if version ~= pending then
                    pending, since = version, now
                end
                if now - since < _M.AGENT_DELAY then
                    return -- the poll comes back each second
                end
            end
            loaded = version
            local config, kind
            if version ~= nil and load then
                config, kind = own(version)
            end
            if version ~= nil then
                kind = config and kind or "stock"
                _M.stats[kind] = _M.stats[kind] + 1
            end
            if config then
                return load(config)
            end
            return callback(...)
        end
    end

    local _, timer_every = debug.getupvalue(standalone.init_worker, index)
    debug.setupvalue(standalone.init_worker, index, function(interval, callback, ...)
        return timer_every(interval, gated(callback), ...)
    end)
    local init_worker = standalone.init_worker
    standalone.init_worker = function(...)
        local register = events.register
        events.register = function(self, handler, source, ...)
            if source == _M.EVENT then
                load = handler -- update_config(config): loads a decoded configuration
                handler = gated(handler)
            end
            return register(self, handler, source, ...)
        end
        local ok, err = pcall(init_worker, ...)
        events.register = register
        if not ok then
            error(err, 0)
        end
    end
    if #problems > 0 then
        return false, table.concat(problems, "; ")
    end
    return true
end

return _M
