-- The original destination of the connection behind the current request (HTTP or stream).
--
-- After iptables REDIRECT the listening socket only shows the capture port; the kernel keeps the
-- pre-NAT address, readable with getsockopt(SO_ORIGINAL_DST) on the connection's fd. No nginx Lua
-- API hands out that fd without taking over the connection, so it is read from nginx's structs,
-- whose prefixes have been the same since nginx 0.1.0:
--   ngx_http_request_t:        uint32_t signature ("HTTP") at 0, ngx_connection_t *connection at 8
--   ngx_stream_lua_request_t:  ngx_connection_t *connection at 0
--   ngx_connection_t:          void *data, ngx_event_t *read, ngx_event_t *write, int fd at 24
--   ngx_event_t:               void *data (the connection) at 0
-- Anything that does not look like that (TLS handshake phases, HTTP/3, a different build) is
-- refused: no answer rather than a wrong one. Needs only LuaJIT FFI and lua-resty-core, so plain
-- nginx + lua-nginx-module runs it as well as APISIX (tests/datapath/ load this file directly).

local ffi = require("ffi")
local base = require("resty.core.base")

local C = ffi.C
local get_request = base.get_request
local subsystem = ngx.config.subsystem

local M = {
    lookups = 0, -- fd walks + getsockopt done in this worker (what the cache saves; read by tests)
}

ffi.cdef [[
typedef struct amesh_event_s { void *data; } amesh_event_t;
typedef struct amesh_connection_s {
    void *data;
    amesh_event_t *read;
    amesh_event_t *write;
    int fd;
} amesh_connection_t;
typedef struct amesh_http_request_s {
    uint32_t signature;
    amesh_connection_t *connection;
} amesh_http_request_t;
typedef struct amesh_stream_request_s { amesh_connection_t *connection; } amesh_stream_request_t;

struct amesh_sockaddr_storage { uint16_t family; char rest[126]; };
struct amesh_sockaddr_in { uint16_t family; uint16_t port; uint8_t addr[4]; char zero[8]; };
struct amesh_sockaddr_in6 { uint16_t family; uint16_t port; uint32_t flowinfo; uint8_t addr[16];
                            uint32_t scope_id; };
int getsockopt(int fd, int level, int optname, void *optval, uint32_t *optlen);
int getsockname(int fd, void *addr, uint32_t *addrlen);
const char *inet_ntop(int af, const void *src, char *dst, uint32_t size);
int memcmp(const void *a, const void *b, size_t n);
]]

local AF_INET, AF_INET6 = 2, 10
local SOL_IP, SOL_IPV6 = 0, 41
local SO_ORIGINAL_DST = 80 -- also IP6T_SO_ORIGINAL_DST
local HTTP_SIGNATURE = 0x50545448 -- "HTTP" read as a little-endian uint32 (x86-64, arm64)

local http_req_t = ffi.typeof("amesh_http_request_t *")
local stream_req_t = ffi.typeof("amesh_stream_request_t *")
local storage = ffi.new("struct amesh_sockaddr_storage")
local sin = ffi.new("struct amesh_sockaddr_in")
local sin6 = ffi.new("struct amesh_sockaddr_in6")
local len = ffi.new("uint32_t[1]")
local text = ffi.new("char[46]")

local function ntohs(v)
    return bit.band(bit.bor(bit.rshift(v, 8), bit.lshift(v, 8)), 0xffff)
end

-- The fd of the current request's connection, or nil and why.
function M.connection_fd()
    local r = get_request()
    if r == nil then
        return nil, "no request"
    end
    local c
    if subsystem == "http" then
        local req = ffi.cast(http_req_t, r)
        if req.signature ~= HTTP_SIGNATURE then
            return nil, "not an ngx_http_request_t"
        end
        c = req.connection
    elseif subsystem == "stream" then
        c = ffi.cast(stream_req_t, r).connection
    else
        return nil, "unknown subsystem " .. tostring(subsystem)
    end
    if c == nil or c.read == nil or c.write == nil then
        return nil, "no connection"
    end
    -- both events point back at their connection in every real ngx_connection_t
    if c.read.data ~= ffi.cast("void *", c) or c.write.data ~= ffi.cast("void *", c) then
        return nil, "connection layout not recognised"
    end
    if c.fd < 0 then
        return nil, "connection has no socket"
    end
    return c.fd
end

-- SO_ORIGINAL_DST of `fd`: address text and port, or nil and why ("not redirected", "ENOENT" when
-- conntrack does not track it).
function M.lookup_fd(fd)
    len[0] = ffi.sizeof(storage)
    if C.getsockname(fd, storage, len) ~= 0 then
        return nil, "getsockname failed: errno " .. ffi.errno()
    end
    local family, level, buf, addr = storage.family
    if family == AF_INET then
        level, buf = SOL_IP, sin
    elseif family == AF_INET6 then
        level, buf = SOL_IPV6, sin6
    else
        return nil, "not an IP socket"
    end
    len[0] = ffi.sizeof(buf)
    if C.getsockopt(fd, level, SO_ORIGINAL_DST, buf, len) ~= 0 then
        local errno = ffi.errno()
        return nil, errno == 2 and "ENOENT" or ("getsockopt failed: errno " .. errno)
    end
    if buf.family ~= family then
        return nil, "address family changed"
    end
    -- conntrack answers for every tracked connection, NATed or not: an original destination equal
    -- to the local address means nothing redirected it (or it was dialled at the capture port itself)
    local here = ffi.cast(family == AF_INET and "struct amesh_sockaddr_in *" or "struct amesh_sockaddr_in6 *",
                          storage)
    if here.port == buf.port and ffi.C.memcmp(here.addr, buf.addr, family == AF_INET and 4 or 16) == 0 then
        return nil, "not redirected"
    end
    addr = C.inet_ntop(family, buf.addr, text, 46)
    if addr == nil then
        return nil, "inet_ntop failed"
    end
    return ffi.string(addr), ntohs(buf.port)
end

-- Per-connection cache: HTTP/1.1 keep-alive and every HTTP/2 stream of one connection share the
-- connection serial number ($connection), unique within this nginx instance's lifetime.
local cache = {}
local cache_size, cache_limit = 0, 4096
local NONE = false

local function remember(key, value)
    if cache_size >= cache_limit then
        cache, cache_size = {}, 0 -- cheap bounded cache: forget everything rather than track LRU
    end
    cache[key] = value
    cache_size = cache_size + 1
end

-- The current connection's original destination: address, port; or nil, reason. Cached.
function M.get()
    local key = ngx.var.connection
    local hit = key and cache[key]
    if hit ~= nil then
        if hit == NONE then
            return nil, "cached: none"
        end
        return hit[1], hit[2]
    end
    M.lookups = M.lookups + 1
    local fd, err = M.connection_fd()
    local addr, port
    if fd then
        addr, port = M.lookup_fd(fd)
        if not addr then
            err = port
        end
    end
    if key then
        remember(key, addr and { addr, port } or NONE)
    end
    if not addr then
        return nil, err
    end
    return addr, port
end

function M.set_cache_limit(n)
    cache_limit = n
end

return M
