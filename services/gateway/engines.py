"""How the gateway reaches engines: the `EngineConnector` it calls through, and `GrpcEngines`, the fleet's
connector. The embedded deployment connects to its engine in-process (services/embedded.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

import grpc

from mint import auth
from mint.errors import MintError
from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.server import channel
from mint.tls import TLSConfig


class SampleStream(Protocol):
    def __iter__(self) -> Iterator[common_pb2.SampleChunk]: ...
    def cancel(self) -> None: ...


class EngineConnector(Protocol):
    def sample(self, address: str, request: engine_pb2.EngineSampleRequest, timeout_s: float | None) -> SampleStream: ...
    def compute_logprobs(self, address: str, request: engine_pb2.EngineLogprobsRequest, timeout_s: float | None) -> engine_pb2.LogprobsResponse: ...
    def tokenizer(self, address: str, request: engine_pb2.GetBaseTokenizerRequest, timeout_s: float | None) -> engine_pb2.BaseTokenizer: ...


class GrpcEngines:
    """One channel per engine address (TLS as `tls` says), calling with the gateway's service key."""

    def __init__(self, service_key: str, tls: TLSConfig | None = None):
        self._tls = tls
        self._metadata = auth.call_metadata(service_key)
        self._stubs: dict[str, engine_pb2_grpc.EngineServiceStub] = {}
        self._lock = threading.Lock()

    def _stub(self, address: str) -> engine_pb2_grpc.EngineServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                stub = self._stubs[address] = engine_pb2_grpc.EngineServiceStub(channel(address, self._tls))
            return stub

    def sample(self, address, request, timeout_s):
        return _GrpcStream(self._stub(address).Sample(request, metadata=self._metadata, timeout=timeout_s))

    def compute_logprobs(self, address, request, timeout_s):
        return self._unary(self._stub(address).ComputeLogprobs, request, timeout_s)

    def tokenizer(self, address, request, timeout_s):
        return self._unary(self._stub(address).GetTokenizer, request, timeout_s)

    def _unary(self, method, request, timeout_s):
        try:
            return method(request, metadata=self._metadata, timeout=timeout_s)
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

