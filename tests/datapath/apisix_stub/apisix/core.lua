-- Test stand-in for the apisix.core APIs amesh/hook.lua (ctx.register_var, config.local_conf) and
-- the amesh-passthrough plugin (json.decode, schema.check, table.clone, log, resolver.parse_domain)
-- use. Registered getters are kept in `vars` for the test location to call; `resolved` is the
-- stand-in DNS the plugin's Host fallback asks.
local vars = {}
local resolved = { ["origin.test"] = "10.20.2.2" } -- netns_tests.pods.OTHER_V4
return {
    vars = vars,
    resolved = resolved,
    json = {
        decode = function(text) -- no cjson in Debian's nginx: the schema is only carried, not used
            return { json = text }
        end,
    },
    schema = {
        check = function() return true end,
    },
    table = {
        clone = function(t)
            local out = {}
            for k, v in pairs(t) do out[k] = v end
            return out
        end,
    },
    log = {
        warn = function(...) ngx.log(ngx.WARN, ...) end,
    },
    resolver = {
        parse_domain = function(host)
            local ip = resolved[host]
            if not ip then return nil, "unknown host" end
            return ip
        end,
    },
    ctx = {
        register_var = function(name, getter)
            vars[name] = getter
        end,
    },
    config = {
        local_conf = function()
            return {
                plugin_attr = {
                    amesh = {
                        inbound_port = 15006,
                        http_ports = { ["15100"] = { port = 9080, direction = "outbound" },
                                       ["15600"] = { port = 8080, direction = "inbound" } },
                    },
                },
            }
        end,
    },
}
