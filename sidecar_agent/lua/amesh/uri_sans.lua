-- The URI subject alternative names of a resty.openssl x509 (Istio's SPIFFE ids), in certificate order.
return function(cert)
    local out = {}
    local names = cert and cert:get_subject_alt_name()
    if names then
        for kind, value in names:each() do
            if kind == "URI" then
                out[#out + 1] = value
            end
        end
    end
    return out
end
