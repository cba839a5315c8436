"""`python -m controller.proto`: generate the gRPC code now (image build step) and print where."""

from controller.proto import ensure_generated

print(ensure_generated())
