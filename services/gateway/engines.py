"""How the gateway reaches engines: over gRPC in a fleet, or directly in the embedded process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

import grpc

from mint import auth
from mint.errors import MintError
from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.server import channel


class SampleStream(Protocol):
    def __iter__(self) -> Iterator[common_pb2.SampleChunk]: ...
    def cancel(self) -> None: ...


class EngineConnector(Protocol):
    def sample(self, address: str, request: engine_pb2.EngineSampleRequest, timeout_s: float | None) -> SampleStream: ...
    def compute_logprobs(self, address: str, request: engine_pb2.EngineLogprobsRequest, timeout_s: float | None) -> engine_pb2.LogprobsResponse: ...


class GrpcEngines:
    """One channel per engine address, calling with the gateway's service key."""

    def __init__(self, service_key: str):
        self._metadata = auth.call_metadata(service_key)
        self._stubs: dict[str, engine_pb2_grpc.EngineServiceStub] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> engine_pb2_grpc.EngineServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                stub = self._stubs[address] = engine_pb2_grpc.EngineServiceStub(channel(address))
            return stub

    def sample(self, address, request, timeout_s):
        return _GrpcStream(self._stub(address).Sample(request, metadata=self._metadata, timeout=timeout_s))

    def compute_logprobs(self, address, request, timeout_s):
        try:
            return self._stub(address).ComputeLogprobs(request, metadata=self._metadata, timeout=timeout_s)
        except grpc.RpcError as err:
            raise MintError.from_rpc_error(err) from None


class _GrpcStream:
    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[common_pb2.SampleChunk]:
        try:
            yield from self._call
        except grpc.RpcError as err:
            raise MintError.from_rpc_error(err) from None

    def cancel(self) -> None:
        self._call.cancel()


class LocalEngines:
    """The embedded process's own engines, called without serialization."""

    def __init__(self) -> None:
        self.engines: dict = {}  # address -> Engine

    def sample(self, address, request, timeout_s):
        from services.engine.servicer import start_sample

        engine = self.engines[address]
        return _LocalStream(engine, start_sample(engine, request))

    def compute_logprobs(self, address, request, timeout_s):
        from services.engine.servicer import compute_logprobs

        return compute_logprobs(self.engines[address], request, timeout_s)


class _LocalStream:
    def __init__(self, engine, handle):
        self._engine, self._handle = engine, handle

    def __iter__(self) -> Iterator[common_pb2.SampleChunk]:
        from services.engine.servicer import stream_chunks

        return stream_chunks(self._handle)

    def cancel(self) -> None:
        self._engine.cancel(self._handle)
