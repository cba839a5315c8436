-- Test stand-in for the two apisix.upstream APIs the amesh-passthrough plugin uses: set (as
-- traffic-split calls it) and get_by_id (the route's own upstream, whose settings are kept).
return {
    set = function(ctx, key, version, conf)
        ctx.upstream_conf, ctx.upstream_key, ctx.upstream_version = conf, key, version
    end,
    get_by_id = function(id)
        return { id = id, scheme = "http", timeout = { connect = 5, send = 60, read = 60 },
                 labels = { ["amesh.passthrough"] = "original-dst" } }
    end,
}
