"""Serving a gRPC service by forwarding every call, as raw bytes, to the process that implements it.

The gateway forwards CatalogService to the catalog and TrainerService to a trainer this way: no message
is decoded or re-encoded, the caller's key and tenant header travel along, and deadlines propagate.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import descriptor as _descriptor

from mint import auth
from mint.server import time_left


def _forwarded_metadata(context: grpc.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() if k in (auth.AUTH_HEADER, auth.TENANT_HEADER, auth.ON_BEHALF_HEADER))


def forwarding_handler(service: _descriptor.ServiceDescriptor, target: Callable[[], grpc.Channel]) -> grpc.GenericRpcHandler:
    """A handler for every method of `service`, forwarding to the channel `target()` returns."""
    handlers = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(_stream_stream(path, target))
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(_stream_unary(path, target))
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(_unary_stream(path, target))
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unary_unary(path, target))
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _unary_unary(path: str, target):
    def forward(request: bytes, context):
        return target().unary_unary(path)(request, metadata=_forwarded_metadata(context), timeout=time_left(context))

    return forward


def _unary_stream(path: str, target):
    def forward(request: bytes, context):
        call = target().unary_stream(path)(request, metadata=_forwarded_metadata(context), timeout=time_left(context))
        context.add_callback(call.cancel)
        yield from call

    return forward


def _stream_unary(path: str, target):
    def forward(requests, context):
        return target().stream_unary(path)(requests, metadata=_forwarded_metadata(context), timeout=time_left(context))

    return forward


def _stream_stream(path: str, target):
    def forward(requests, context):
        call = target().stream_stream(path)(requests, metadata=_forwarded_metadata(context), timeout=time_left(context))
        context.add_callback(call.cancel)
        yield from call

    return forward
