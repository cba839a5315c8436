-- Facts about a connection, handed from one of our listeners to another across a loopback hop.
--
-- The sending side records the facts in a shared dict under a fresh loopback source address and binds
-- the hop's connection to it (ngx.balancer.bind_to_local_addr, in the balancer phase); the receiving
-- listener reads them back by its connection's $remote_addr. Addresses come from 127.1.0.0 –
-- 127.254.255.255 (clear of 127.0.0.1 and Istio's 127.0.0.6) by a counter; `add` refuses an address a
-- live record holds, so two live records never share one, and the kernel picks the source port.
-- Users: amesh.mtls_origin (outbound TCP mTLS, a stream dict) and amesh.inbound_client (the client's
-- address behind the inbound front, a dict both subsystems see).

local ngx_balancer = require("ngx.balancer")

local SLOTS = 254 * 65536
local TRIES = 8

local _M = {
    NEXT = "amesh-hop-next", -- the dict's counter of addresses handed out
}

-- The `n`th source address.
function _M.address(n)
    local slot = n % SLOTS
    return string.format("127.%d.%d.%d", 1 + math.floor(slot / 65536), math.floor(slot / 256) % 256, slot % 256)
end
local address = _M.address

-- Balancer phase: record `value` and bind the upstream connection to its address. `ttl` 0: until
-- release(). `held`: the address an earlier try of this connection got (the balancer runs again on a
-- retry): the record there is replaced, not a second one left behind. Returns the address, or nil and why
-- (nothing recorded then).
function _M.bind(dict, value, ttl, held)
    if held then
        local ok, err = dict:set(held, value, ttl)
        if ok then
            ok, err = ngx_balancer.bind_to_local_addr(held)
        end
        if not ok then
            dict:delete(held)
            return nil, err
        end
        return held
    end
    local n, err = dict:incr(_M.NEXT, 1, 0)
    if not n then
        return nil, err
    end
    for _ = 1, TRIES do
        local source = address(n)
        local ok
        ok, err = dict:add(source, value, ttl)
        if ok then
            ok, err = ngx_balancer.bind_to_local_addr(source)
            if not ok then
                dict:delete(source)
                return nil, err
            end
            return source
        elseif err ~= "exists" then
            return nil, err
        end
        n = dict:incr(_M.NEXT, 1, 0)
    end
    return nil, "no free loopback source address"
end

-- The receiving listener: what was recorded for this connection's source address (`addr`, by default
-- $remote_addr), or nil.
function _M.get(dict, addr)
    return dict:get(addr or ngx.var.remote_addr)
end

function _M.release(dict, source)
    dict:delete(source)
end

return _M
