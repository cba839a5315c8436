-- The JSON Schema of one of the project's APISIX plugins, read from `<name>.schema.json` beside the plugin's
-- file: the agent validates documents with the same file (sidecar_agent/schema.py), so there is one definition.
local core = require("apisix.core")

local _M = {}

-- `source`: the plugin's debug.getinfo(1, "S").source ("@/path/to/plugins/<name>.lua")
function _M.load(source, name)
    local here = source:match("^@(.*/)") or "./"
    local file, err = io.open(here .. name .. ".schema.json")
    if not file then
        error(name .. ": cannot read its schema: " .. tostring(err))
    end
    local text = file:read("*a")
    file:close()
    return core.json.decode(text)
end

return _M
