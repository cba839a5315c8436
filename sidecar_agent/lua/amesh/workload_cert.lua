-- The workload certificate the agent keeps in plugin_attr.amesh.mtls_dir (cert-chain.pem, key.pem,
-- root-cert.pem; sidecar_agent/security/workload.py), parsed for nginx, per worker and subsystem.
-- The files are re-read at most once a second: a rotation takes effect without a reload. The agent
-- writes key, chain, root one after the other (atomic renames), so a key that does not belong to the
-- chain is a rotation caught halfway: the material in force stays until the next check.

local ngx_ssl = require("ngx.ssl")
local openssl_x509 = require("resty.openssl.x509")
local openssl_store = require("resty.openssl.x509.store")
local openssl_pkey = require("resty.openssl.pkey")

local RECHECK_SECONDS = 1

local _M = {}
local dir
local held = { checked = -1 }

local function read(path)
    local file = io.open(path, "rb")
    if not file then
        return nil
    end
    local data = file:read("*a")
    file:close()
    return data
end

local function parse(chain, key, root)
    local leaf, err = openssl_x509.new(chain)
    if not leaf then
        return nil, "cert-chain.pem: " .. err
    end
    local pkey
    pkey, err = openssl_pkey.new(key)
    if not pkey then
        return nil, "key.pem: " .. err
    end
    if leaf:get_pubkey():to_PEM("public") ~= pkey:to_PEM("public") then
        return nil, "key.pem does not belong to cert-chain.pem (rotation in progress)"
    end
    local out = { store = openssl_store.new() }
    local ok
    ok, err = out.store:load_file(dir .. "/root-cert.pem")
    if not ok then
        return nil, "root-cert.pem: " .. err
    end
    out.cert, err = ngx_ssl.parse_pem_cert(chain)
    if not out.cert then
        return nil, "cert-chain.pem: " .. err
    end
    out.key, err = ngx_ssl.parse_pem_priv_key(key)
    if not out.key then
        return nil, "key.pem: " .. err
    end
    out.roots, err = ngx_ssl.parse_pem_cert(root) -- for verify_client (inbound termination)
    if not out.roots then
        return nil, "root-cert.pem: " .. err
    end
    return out
end

function _M.configure(directory)
    dir = directory
end

-- {cert, key (for nginx), store (resty.openssl), roots (for verify_client)}, or nil and why.
function _M.get()
    if not dir then
        return nil, "no workload certificate directory (plugin_attr.amesh.mtls_dir)"
    end
    local now = ngx.now()
    if now - held.checked < RECHECK_SECONDS then
        return held.current, held.why
    end
    held.checked = now
    local chain, key, root = read(dir .. "/cert-chain.pem"), read(dir .. "/key.pem"), read(dir .. "/root-cert.pem")
    if not (chain and key and root) then
        held.why = "no workload certificate in " .. dir .. " yet"
        return held.current, held.why
    end
    if chain == held.chain and key == held.key and root == held.root then
        return held.current, held.why
    end
    local parsed, err = parse(chain, key, root)
    if not parsed then
        held.why = err
        ngx.log(ngx.WARN, "amesh workload certificate: keeping the one in force: ", err)
        return held.current, held.why
    end
    held.current, held.why = parsed, nil
    held.chain, held.key, held.root = chain, key, root
    return parsed
end

return _M
