"""The local mesh: istiod + Bookinfo pods in network namespaces with APISIX sidecars (amesh-mesh)."""
