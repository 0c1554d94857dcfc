"""Server scaffolding shared by every MinT service.

`build_server` makes a gRPC server with health and reflection, and one interceptor that for every call
(1) authenticates the API key into a `Principal` for the handler, and (2) turns `MintError` (and errors
raised by the services a handler calls downstream) into the matching gRPC status. Handlers raise; they never call
`context.abort` themselves. Its port, and the channels `channel` makes, are plaintext or TLS as `mint.tls`
decides.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import gc
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from mint import auth, scopes
from mint.errors import Code, MintError, invalid
from mint.limits import RequestLimits, check_request, cut_message
from mint.runtime import serial_thread
from mint.tls import TLSConfig, split_address, wants_tls

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Authenticator(Protocol):
    def authenticate(self, api_key: str) -> auth.Principal: ...


# Called for every call once its key is checked, with the caller (None without an authenticator) and the
# full method name; raises MintError to refuse the call.
Admit = Callable[[auth.Principal | None, str], None]


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
    """For every call: parse and check the request (`mint.limits`), authenticate, hold an upload slot for
    client-streaming calls, and map errors to statuses."""

    def __init__(self, authenticator: Authenticator | None, limits: RequestLimits, admit: Admit | None = None):
        self._authenticator = authenticator
        self._limits = limits
        self._admit = admit
        self._uploads = _UploadSlots(limits)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_METHODS):
            return handler
        method = handler_call_details.method
        # The interceptor parses request bytes itself (deserializer None below): a body that is not a valid
        # message then answers INVALID_ARGUMENT instead of grpcio's generic failure.
        parse = _parser(handler.request_deserializer, self._limits)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, parse), None, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, parse), None, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_upload(handler.stream_unary, method, parse), None, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream_upload(handler.stream_stream, method, parse), None, handler.response_serializer
        )

    @contextmanager
    def _scope(self, context: grpc.ServicerContext, method: str, *, upload: bool = False) -> Iterator[None]:
        try:
            principal = None
            if self._authenticator is not None:
                principal = principal_from_metadata(self._authenticator, context.invocation_metadata())
                scopes.check(principal, method)  # the key holds a scope this method accepts (mint.scopes.REQUIRED)
            if self._admit is not None:
                self._admit(principal, method)  # the service's own per-call check (the gateway: tenants' request rates)
            with auth.acting(principal), self._uploads.hold(principal) if upload else nullcontext():
                yield
        except MintError as err:
            if err.code is Code.INTERNAL:
                log.error("%s answered INTERNAL: %s", method, err.message)
            retry_after_s = getattr(err, "retry_after_s", None)  # quota refusals say when to retry
            if retry_after_s is not None:
                context.set_trailing_metadata((("retry-after-s", f"{retry_after_s:.3g}"),))
            context.abort(err.grpc_status, cut_message(err.message, self._limits.max_error_bytes))
        except grpc.RpcError as err:
            # A downstream service's answer passes through with its own status.
            status = err.code() if hasattr(err, "code") else grpc.StatusCode.UNAVAILABLE
            details = err.details() if hasattr(err, "details") else str(err)
            if status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("%s: a downstream service answered %s: %s", method, status.name, details)
            context.abort(status, cut_message(details or status.name, self._limits.max_error_bytes))
        except Exception:
            if context.code() is not None:  # the handler already aborted
                raise
            log.exception("unhandled error in %s", method)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")

    def _wrap_unary(self, behavior, method: str, parse):
        def wrapped(request: bytes, context):
            with self._scope(context, method):
                return behavior(parse(request) if parse else request, context)

        return wrapped

    def _wrap_stream(self, behavior, method: str, parse):
        def wrapped(request: bytes, context):
            with self._scope(context, method):
                yield from behavior(parse(request) if parse else request, context)

        return wrapped

    def _wrap_upload(self, behavior, method: str, parse):
        def wrapped(requests: Iterator[bytes], context):
            with self._scope(context, method, upload=True):
                if parse is None:  # forwarded as it comes: the service that implements it bounds idleness
                    return behavior(requests, context)
                with _IdleBounded(requests, self._limits.upload_idle_s) as raw:
                    return behavior(map(parse, raw), context)

        return wrapped

    def _wrap_stream_upload(self, behavior, method: str, parse):
        def wrapped(requests: Iterator[bytes], context):
            with self._scope(context, method, upload=True):
                if parse is None:
                    yield from behavior(requests, context)
                    return
                with _IdleBounded(requests, self._limits.upload_idle_s) as raw:
                    yield from behavior(map(parse, raw), context)

        return wrapped


def _parser(deserializer: Callable[[bytes], Any] | None, limits: RequestLimits) -> Callable[[bytes], Any] | None:
    """bytes -> a checked request message; None for raw handlers (a service forwarding calls untouched,
    whose target parses and checks them)."""
    if deserializer is None:
        return None
    name = getattr(getattr(deserializer, "__self__", None), "__name__", "request")

    def parse(raw: bytes):
        try:
            message = deserializer(raw)
        except (DecodeError, RecursionError, ValueError) as err:
            raise invalid(f"the request body is not a valid {name} message (truncated, or a text field that is not UTF-8): {err}") from None
        check_request(message, limits)
        return message

    return parse


class _UploadSlots:
    """How many client-streaming calls are open, per key and in all: one client's idle uploads must not
    hold every worker of the server. Service keys (MinT's own services, which carry many tenants' work)
    count only against the server-wide limit."""

    def __init__(self, limits: RequestLimits):
        self._limits = limits
        self._lock = threading.Lock()
        self._open = 0
        self._by_key: collections.Counter[str] = collections.Counter()

    @contextmanager
    def hold(self, principal: auth.Principal | None) -> Iterator[None]:
        key = principal.key_id if principal is not None and principal.role is not auth.Role.SERVICE else None
        with self._lock:
            if self._open >= self._limits.max_uploads:
                raise MintError(
                    Code.RESOURCE_EXHAUSTED,
                    f"this server has {self._open} uploads in progress, its limit (max_uploads); retry in a few seconds",
                )
            if key is not None and self._by_key[key] >= self._limits.max_uploads_per_key:
                raise MintError(
                    Code.RESOURCE_EXHAUSTED,
                    f"key {key} already has {self._by_key[key]} uploads in progress, its limit (max_uploads_per_key); "
                    "finish one first",
                )
            self._open += 1
            if key is not None:
                self._by_key[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if key is not None:
                    self._by_key[key] -= 1
                    if not self._by_key[key]:
                        del self._by_key[key]


_END = object()


class _IdleBounded:
    """A call's request stream, read by a thread of its own, so the handler waits for each message at most
    `idle_s` and then refuses the call (RESOURCE_EXHAUSTED) instead of holding a worker for as long as a
    silent client likes. The queue between them is short: a slow handler still slows the client down."""

    def __init__(self, requests: Iterator[bytes], idle_s: float):
        self._requests = requests
        self._idle_s = idle_s
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._done = threading.Event()
        self._idle_error: MintError | None = None

    def __enter__(self) -> Iterator[bytes]:
        threading.Thread(target=self._read, name="upload-reader", daemon=True).start()
        return self._messages()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done.set()
        if exc is not None and self._idle_error is not None and exc is not self._idle_error:
            # The idle stream failed a call made with it (a forwarded upload): say why, not how that failed.
            raise self._idle_error from None

    def _read(self) -> None:
        try:
            for raw in self._requests:
                if not self._put(raw):
                    return
            self._put(_END)
        except Exception as err:  # the call ended under the reader (cancelled, or the handler finished)
            self._put(err)

    def _put(self, item) -> bool:
        while not self._done.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _messages(self) -> Iterator[bytes]:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                self._idle_error = MintError(
                    Code.RESOURCE_EXHAUSTED,
                    f"the upload sent nothing for {self._idle_s:g} s, its limit (upload_idle_s); send the next message sooner",
                )
                raise self._idle_error from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def build_server(
    services: Sequence[Service],
    *,
    address: str = "127.0.0.1:0",
    authenticator: Authenticator | None = None,
    max_workers: int = 64,
    limits: RequestLimits | None = None,
    health_servicer: health.HealthServicer | None = None,
    tls: TLSConfig | None = None,
    public: bool = False,
    admit: Admit | None = None,
) -> tuple[grpc.Server, int]:
    """A server bound to its port but not started: returns (server, port). Call `server.start()`.
    `health_servicer`: the caller's own, to turn NOT_SERVING later (an engine whose step loop died).
    `tls`: serve TLS (mTLS where it requires client certificates); `public`: this is the port SDK clients
    call, where client certificates are not asked for unless `tls` says so. `admit`: a check the interceptor
    runs on every call right after the scope check."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc", initializer=serial_thread),
        interceptors=[MintInterceptor(authenticator, _for_workers(limits or RequestLimits(), max_workers), admit)],
        options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_workers * 4,
    )
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in services:
        service.add_to_server(service.servicer, server)
        health_servicer.set(service.name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    _enable_reflection(server, [s.name for s in services])
    credentials = tls.server_credentials(public=public) if tls is not None else None
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise MintError(Code.UNAVAILABLE, f"could not bind {address}")
    log.info("port %d serves %s", port, tls.security(public=public) if tls is not None else "plaintext")
    return server, port


def _for_workers(limits: RequestLimits, max_workers: int) -> RequestLimits:
    return limits if limits.max_uploads else dataclasses.replace(limits, max_uploads=max(1, max_workers // 2))


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.Server, names: list[str]) -> None:
    """Server reflection under both names clients ask for: `grpc.reflection.v1` (grpcurl, current
    clients) and `v1alpha` (older ones). The two protocols are the same messages under two packages."""
    _register_reflection_v1()
    names = [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, REFLECTION_V1, reflection.SERVICE_NAME]
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),))


def _register_reflection_v1() -> None:
    """Put grpc.reflection.v1's descriptor in the default pool (grpcio-reflection ships only v1alpha's), so
    reflection can describe the v1 service too."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name, file.package = name, "grpc.reflection.v1"
    old, new = ".grpc.reflection.v1alpha.", ".grpc.reflection.v1."
    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(old, new)
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(file)


READY_LINE = "mint {name} listening on port {port} ({security})"


def run_until_signalled(
    server: grpc.Server, port: int, name: str, on_stop: Callable[[], None] | None = None, grace_s: float = 5.0,
    security: str = "plaintext",
) -> None:
    """Serve until SIGINT/SIGTERM, then stop gracefully. Prints READY_LINE once serving, which is how a
    parent process (`mint.procs`) learns the port of a child bound to port 0; `security` is what the port
    serves (`TLSConfig.security`: plaintext, TLS or mTLS)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    # Everything alive now (modules, the model, caches) lives as long as the process: keeping it out of the
    # collector's generations shortens the pauses that set tail latency.
    gc.freeze()
    print(READY_LINE.format(name=name, port=port, security=security), flush=True)
    stop.wait()
    server.stop(grace_s).wait()
    if on_stop is not None:
        on_stop()


def channel(address: str, tls: TLSConfig | None = None) -> grpc.Channel:
    """A channel to `address` (`host:port`, `grpcs://host:port`, `grpc://host:port`): TLS when the scheme asks
    for it, or for a bare address when `tls` has a CA, trusting that CA and presenting `tls`'s certificate to
    servers that require one (mTLS)."""
    target = split_address(address)[0]
    if not wants_tls(address, tls):
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(target, (tls or TLSConfig()).channel_credentials(), options=CHANNEL_OPTIONS)


class RemoteAuthenticator:
    """Authenticates keys by asking the catalog (WhoAmI), caching answers for `ttl_s` seconds (FleetConfig's
    key_cache_ttl_s, MINT_KEY_CACHE_TTL_S): a key revoked in the catalog works here at most that much longer.
    For services that do not own the key table. `roles` limits who may call (e.g. only service keys, for
    engines)."""

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
        expires_at = who.expires_at.ToDatetime(tzinfo=dt.UTC) if who.HasField("expires_at") else None
        return auth.Principal(
            tenant=who.tenant, key_id=who.key_id, role=role, scopes=scopes.parse(who.scopes), key_name=who.key_name, expires_at=expires_at,
        )


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the call's deadline; None when the client set none (gRPC reports a huge number)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e7 else max(0.0, remaining)
