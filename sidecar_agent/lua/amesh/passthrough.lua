-- The pure part of the amesh-passthrough plugin: the upstream node for an original destination.
--
-- No APISIX dependency (LuaJIT FFI only), so tests/datapath runs it in Debian's nginx as it runs
-- origdst.lua. Refuses what would loop back into the proxy or go nowhere: no address, a port that is
-- not one, an address that is not an IP literal, loopback (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104),
-- unspecified (0.0.0.0, ::) and the capture ports themselves (15001/15006 on any address).

local ffi = require("ffi")

local C = ffi.C
local AF_INET, AF_INET6 = 2, 10

pcall(ffi.cdef, "int inet_pton(int af, const char *src, void *dst);")

local buf = ffi.new("uint8_t[16]")

local M = {}

-- 4 or 6 and the 4/16 address bytes (a Lua string), or nil when `addr` is no IP literal.
function M.parse(addr)
    if type(addr) ~= "string" or addr == "" then
        return nil
    end
    if C.inet_pton(AF_INET, addr, buf) == 1 then
        return 4, ffi.string(buf, 4)
    end
    local bare = addr:match("^%[(.*)%]$") or addr
    if C.inet_pton(AF_INET6, bare, buf) == 1 then
        return 6, ffi.string(buf, 16)
    end
    return nil
end

local V4_MAPPED = string.rep("\0", 10) .. "\255\255"

local function refused_address(family, bytes)
    if family == 6 and bytes:sub(1, 12) == V4_MAPPED then
        family, bytes = 4, bytes:sub(13)
    end
    if family == 4 then
        if bytes:byte(1) == 127 then
            return "loopback"
        end
        if bytes == "\0\0\0\0" then
            return "unspecified"
        end
        return nil
    end
    if bytes == string.rep("\0", 15) .. "\1" then
        return "loopback"
    end
    if bytes == string.rep("\0", 16) then
        return "unspecified"
    end
    return nil
end

-- `refused_ports`: a set {[15001] = true, ...}. Returns the node {host, port, weight, priority}
-- (IPv6 bracketed, as the translated upstreams write it), or nil and why.
function M.node(addr, port, refused_ports)
    if addr == nil or addr == "" then
        return nil, "no original destination"
    end
    local n = tonumber(port)
    if not n or n < 1 or n > 65535 or n % 1 ~= 0 then
        return nil, "original port " .. tostring(port) .. " is not a port number"
    end
    local family, bytes = M.parse(addr)
    if not family then
        return nil, "original address " .. tostring(addr) .. " is not an IP address"
    end
    local why = refused_address(family, bytes)
    if why then
        return nil, "original destination " .. addr .. " is " .. why
    end
    if refused_ports and refused_ports[n] then
        return nil, "original port " .. n .. " is a capture port (would loop into the proxy)"
    end
    local host = addr
    if family == 6 then
        host = "[" .. (addr:match("^%[(.*)%]$") or addr) .. "]"
    end
    return { host = host, port = n, weight = 1, priority = 0 }
end

return M
