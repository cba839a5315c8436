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
-- The poll runs through a local of admin/standalone.lua (`timer_every`), replaced by its upvalue: when a
-- future APISIX renames it, install() says so and stock behaviour stays (the real-APISIX tests fail then).

local _M = {
    DICT = "standalone-config",
    VERSION_KEY = "amesh:config-version",
    EVENT = "standalone-api-configuration-update", -- admin/standalone.lua EVENT_UPDATE
    AGENT_DELAY = 10, -- seconds the privileged agent waits for a version to settle before loading it
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

function _M.install()
    local dict = ngx.shared[_M.DICT]
    if not dict then
        return false, "no shared dict " .. _M.DICT .. " (not API-driven standalone mode)"
    end
    local standalone = require("apisix.admin.standalone")
    local events = require("apisix.events")
    local index = upvalue_index(standalone.init_worker, "timer_every")
    if not index then
        return false, "apisix.admin.standalone.init_worker has no upvalue timer_every"
    end

    local posted = 0
    local post = events.post
    events.post = function(self, source, ...)
        if source == _M.EVENT then
            posted = posted + 1
            local ok, err = dict:set(_M.VERSION_KEY, ngx.now() .. "/" .. ngx.worker.pid() .. "/" .. posted)
            if not ok then -- every poll then decodes, as stock APISIX does: slow, never stale
                ngx.log(ngx.ERR, "amesh: configuration version not stored: ", err)
                dict:delete(_M.VERSION_KEY)
            end
        end
        return post(self, source, ...)
    end

    -- one VM's view: the version its poll or event handler last loaded
    local loaded
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
    return true
end

return _M
