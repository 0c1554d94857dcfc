"""Server scaffolding shared by every MinT service.

`build_server` makes a gRPC server with health and reflection, and one interceptor that for every call
(1) authenticates the API key into a `Principal` for the handler, and (2) turns `MintError` (and errors
from services called downstream) into the matching gRPC status. Handlers raise; they never call
`context.abort` themselves.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor as _descriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mint import auth
from mint.errors import Code, MintError
from mint.runtime import serial_thread

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Authenticator(Protocol):
    def authenticate(self, api_key: str) -> auth.Principal: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """A servicer and the generated function that adds it to a server."""

    descriptor: _descriptor.ServiceDescriptor
    servicer: Any
    add_to_server: Callable[[Any, grpc.Server], None]

    @property
    def name(self) -> str:
        return self.descriptor.full_name


def principal_from_metadata(authenticator: Authenticator, metadata: Sequence[tuple[str, Any]]) -> auth.Principal:
    key = auth.key_from_metadata(metadata)
    if not key:
        raise MintError(Code.UNAUTHENTICATED, "this call needs an API key (authorization: Bearer mint_...)")
    principal = authenticator.authenticate(key)
    tenant = auth.tenant_from_metadata(metadata)
    if tenant:
        principal = principal.acting_as(tenant)
    on_behalf_of = auth.on_behalf_from_metadata(metadata)
    return principal.for_key(on_behalf_of) if on_behalf_of else principal


class MintInterceptor(grpc.ServerInterceptor):
    def __init__(self, authenticator: Authenticator | None):
        self._authenticator = authenticator

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_METHODS):
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(handler.stream_stream, method),
            handler.request_deserializer,
            handler.response_serializer,
        )

    @contextmanager
    def _scope(self, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        try:
            principal = None
            if self._authenticator is not None:
                principal = principal_from_metadata(self._authenticator, context.invocation_metadata())
            with auth.acting(principal):
                yield
        except MintError as err:
            context.abort(err.grpc_status, err.message)
        except grpc.RpcError as err:
            # A downstream service's answer passes through with its own status.
            status = err.code() if hasattr(err, "code") else grpc.StatusCode.UNAVAILABLE
            context.abort(status, err.details() if hasattr(err, "details") else str(err))
        except Exception:
            if context.code() is not None:  # the handler already aborted
                raise
            log.exception("unhandled error in %s", method)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")

    def _wrap_unary(self, behavior, method: str):
        def wrapped(request, context):
            with self._scope(context, method):
                return behavior(request, context)

        return wrapped

    def _wrap_stream(self, behavior, method: str):
        def wrapped(request, context):
            with self._scope(context, method):
                yield from behavior(request, context)

        return wrapped


def build_server(
    services: Sequence[Service],
    *,
    address: str = "127.0.0.1:0",
    authenticator: Authenticator | None = None,
    max_workers: int = 64,
) -> tuple[grpc.Server, int]:
    """A server bound to its port but not started: returns (server, port). Call `server.start()`."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc", initializer=serial_thread),
        interceptors=[MintInterceptor(authenticator)],
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.add_to_server(service.servicer, server)
        health_servicer.set(service.name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise MintError(Code.UNAVAILABLE, f"could not bind {address}")
    return server, port


READY_LINE = "mint {name} listening on port {port}"


def run_until_signalled(
    server: grpc.Server, port: int, name: str, on_stop: Callable[[], None] | None = None, grace_s: float = 5.0
) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully. Prints READY_LINE once serving, which is how a
    parent process (`mint.procs`) learns the port of a child bound to port 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    # Everything alive now (modules, the model, caches) lives as long as the process: keeping it out of the
    # collector's generations shortens the pauses that set tail latency.
    gc.freeze()
    print(READY_LINE.format(name=name, port=port), flush=True)
    stop.wait()
    server.stop(grace_s).wait()
    if on_stop is not None:
        on_stop()


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


class RemoteAuthenticator:
    """Authenticates keys by asking the catalog (WhoAmI), caching answers for a few seconds; for services
    that do not own the key table. `roles` limits who may call (e.g. only service keys, for engines)."""

    def __init__(self, catalog: grpc.Channel, *, ttl_s: float = 10.0, roles: frozenset[auth.Role] | None = None):
        from mint.proto import catalog_pb2_grpc

        self._stub = catalog_pb2_grpc.CatalogServiceStub(catalog)
        self._roles = roles
        self._cache = auth.KeyCache(self._who_am_i, ttl_s)

    def authenticate(self, api_key: str) -> auth.Principal:
        principal = self._cache.get(api_key)
        if self._roles is not None and principal.role not in self._roles:
            raise MintError(Code.PERMISSION_DENIED, f"this service accepts only {sorted(r.value for r in self._roles)} keys")
        return principal

    def _who_am_i(self, api_key: str) -> auth.Principal:
        from mint.proto import catalog_pb2

        try:
            who = self._stub.WhoAmI(catalog_pb2.WhoAmIRequest(), metadata=auth.call_metadata(api_key), timeout=10)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise MintError(Code.UNAUTHENTICATED, err.details() or "API key is unknown or revoked") from None
            raise MintError(Code.UNAVAILABLE, f"cannot check the API key: the catalog answered {err.code().name}") from None
        role = {catalog_pb2.ROLE_ADMIN: auth.Role.ADMIN, catalog_pb2.ROLE_SERVICE: auth.Role.SERVICE}.get(who.role, auth.Role.MEMBER)
        return auth.Principal(tenant=who.tenant, key_id=who.key_id, role=role)


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the call's deadline; None when the client set none (gRPC reports a huge number)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e7 else max(0.0, remaining)
