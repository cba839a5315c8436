-- Test stand-in for the two apisix.core APIs amesh/hook.lua uses: ctx.register_var and
-- config.local_conf. Registered getters are kept in `vars` for the test location to call.
local vars = {}
return {
    vars = vars,
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
