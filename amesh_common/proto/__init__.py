"""Python code of our own gRPC service (`amesh/v1/plugins.proto`), generated and committed.

`pb2` holds the messages, `pb2_grpc` the servicer base, stub and registration helper. After editing the
proto run `python -m amesh_common.protogen` (tests/controller/test_proto.py fails until you do).
"""

from amesh_common.proto.amesh.v1 import plugins_pb2 as pb2
from amesh_common.proto.amesh.v1 import plugins_pb2_grpc as pb2_grpc

__all__ = ["pb2", "pb2_grpc"]
