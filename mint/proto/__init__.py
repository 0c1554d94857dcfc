"""Generated protobuf and gRPC modules for mint.v1."""
