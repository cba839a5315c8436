"""The gRPC edge of workload identity: one `IstioCertificateService/CreateCertificate` call to istiod's CA.

As pilot-agent's citadel client: TLS verified with the mesh root (XDS_ROOT_CA / CA_ROOT_CA), istiod's name
from ISTIOD_SAN or the CA host, the pod's projected token (audience istio-ca) as `authorization: Bearer`,
re-read on every call, and the cluster id as `ClusterID` metadata when the pod has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from amesh_common.proto.istio.v1.auth import ca_pb2, ca_pb2_grpc
from sidecar_agent.xds.client import TlsSettings, Transport, open_channel


class CaError(Exception):
    """The CA refused or could not be reached; the message is the reason readiness and the log show."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CaEndpoint:
    address: str  # host:port (istiod :15012)
    root_cert: Path | None  # the mesh root that verifies the CA; None: the system's roots
    token: Path
    server_name: str | None = None  # the name the CA's certificate must carry (default: the host)
    cluster_id: str = ""
    timeout: float = 10.0


async def create_certificate(endpoint: CaEndpoint, csr_pem: str, validity_seconds: int,
                             metadata: Mapping[str, object] | None = None) -> tuple[list[str], list[str]]:
    """(cert_chain, root_cert.ca_cert) of istiod's answer, or CaError naming why not."""
    if not endpoint.token.is_file():
        raise CaError(f"no token at {endpoint.token} to authenticate to the CA at {endpoint.address} "
                      "(the pod's istio-token projection; --xds-token)", "NO_TOKEN")
    if endpoint.root_cert is not None and not endpoint.root_cert.is_file():
        raise CaError(f"no mesh root at {endpoint.root_cert} to verify the CA at {endpoint.address} "
                      "(XDS_ROOT_CA / CA_ROOT_CA)", "NO_ROOT")
    host = endpoint.address.rpartition(":")[0]
    transport = Transport(endpoint.address, TlsSettings(endpoint.root_cert, endpoint.token,
                                                        endpoint.server_name or host))
    request = ca_pb2.IstioCertificateRequest(csr=csr_pem, validity_duration=int(validity_seconds))
    if metadata:
        request.metadata.update(dict(metadata))
    call_metadata = (("clusterid", endpoint.cluster_id),) if endpoint.cluster_id else None
    try:
        async with open_channel(transport) as channel:
            stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
            response = await stub.CreateCertificate(request, timeout=endpoint.timeout, metadata=call_metadata)
    except grpc.aio.AioRpcError as exc:
        raise CaError(describe(endpoint, exc.code(), exc.details() or ""), exc.code().name) from None
    return list(response.cert_chain), list(response.root_cert.ca_cert)


def describe(endpoint: CaEndpoint, code: grpc.StatusCode, details: str) -> str:
    """The operator's reading of a failed CreateCertificate."""
    where = f"the CA at {endpoint.address}"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return (f"{where} refused the token {endpoint.token} (UNAUTHENTICATED: {details}): istiod accepts only "
                "a token for the audience istio-ca from its JWT issuer, not expired, for system:serviceaccount:<ns>:<sa>")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"{where} is unreachable ({code.name}: {details})"
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return (f"{where} serves no certificate service ({details}): is it istiod's secure port 15012 with "
                "ENABLE_CA_SERVER? (CA_ADDR)")
    return f"{where} refused the certificate request ({code.name}: {details})"
