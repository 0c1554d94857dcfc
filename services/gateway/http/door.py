"""What every HTTP route of the gateway shares.

The servicer's calls block (engine events come from queues, the catalog over gRPC), so they run on a pool
of worker threads, as the principal the caller's key authenticates to — the same authenticator, headers
(`Authorization: Bearer`, `x-mint-tenant`), scopes and request limits as the gRPC side. A streamed call hands its
items to the event loop as they come; when the client goes away (or the response ends) the call's
end-of-call callbacks run, which cancel its engine work, as gRPC runs them when a call ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from starlette.requests import Request

from mint import auth, scopes
from mint.errors import Code, MintError, invalid
from mint.limits import RequestLimits, check_request, cut_message
from mint.runtime import serial_thread
from mint.server import Authenticator, principal_from_metadata
from services.gateway.servicer import Call, SamplingServicer

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BODY_BYTES = 8 * 1024 * 1024
_END = object()


class _Ended:
    """A call's end-of-call callbacks: run once, when it ends; one added after that runs at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.ended = False

    def add(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self.ended:
                self._callbacks.append(callback)
                return
        callback()

    def end(self) -> None:
        with self._lock:
            self.ended = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("an end-of-call callback failed")


class Caller:
    """An authenticated HTTP caller: its key, the tenant it named (x-mint-tenant), and its principal."""

    def __init__(self, api_key: str, tenant: str | None, principal: auth.Principal):
        self.api_key = api_key
        self.tenant = tenant
        self.principal = principal


class CatalogReader(Protocol):
    def call(self, method: str, request: Message, caller: Caller) -> Message:
        """CatalogService.`method`(request), answered as the caller would be over gRPC."""


class GrpcCatalog:
    """The catalog over gRPC, called with the caller's own key (and tenant header)."""

    def __init__(self, channel: grpc.Channel):
        from mint.proto import catalog_pb2_grpc

        self._stub = catalog_pb2_grpc.CatalogServiceStub(channel)

    def call(self, method, request, caller):
        try:
            return getattr(self._stub, method)(request, metadata=auth.call_metadata(caller.api_key, caller.tenant), timeout=30)
        except grpc.RpcError as err:
            raise MintError.from_rpc_error(err) from None


class LocalCatalog:
    """The catalog servicer of this process (embedded), called on a worker thread acting as the caller."""

    def __init__(self, servicer):
        self._servicer = servicer

    def call(self, method, request, caller):
        return getattr(self._servicer, method)(request, None)


class Door:
    """The gateway's servicer and authenticator, reached from async HTTP handlers."""

    def __init__(
        self, servicer: SamplingServicer, authenticator: Authenticator, catalog: CatalogReader, *,
        limits: RequestLimits | None = None, max_workers: int = 256,
    ):
        self.servicer = servicer
        self.authenticator = authenticator
        self.catalog = catalog
        self.limits = limits or RequestLimits()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="http", initializer=serial_thread)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self, message: Message) -> None:
        """The request limits the gRPC side checks on every request message."""
        check_request(message, self.limits)

    async def caller(self, request: Request, method: str) -> Caller:
        """The request's caller, authenticated, and holding a scope the gRPC `method` (the RPC this route
        does the work of, e.g. /mint.v1.SamplingService/Sample) accepts (mint.scopes)."""
        metadata = [(k.lower(), v) for k, v in request.headers.items()]
        key = auth.key_from_metadata(metadata)
        if not key:
            raise MintError(Code.UNAUTHENTICATED, "this call needs an API key (Authorization: Bearer mint_...)")
        principal = await self.run(None, principal_from_metadata, self.authenticator, metadata)
        scopes.check(principal, method)
        return Caller(key, auth.tenant_from_metadata(metadata), principal)

    async def run(self, caller: Caller | None, fn: Callable[..., T], *args) -> T:
        """fn(*args) on a worker thread, as the caller."""

        def work():
            with auth.acting(caller.principal if caller else None):
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def call(self, caller: Caller) -> tuple[Call, _Ended]:
        ended = _Ended()
        return Call(caller.api_key, lambda: None, ended.add), ended

    async def stream(self, caller: Caller, produce: Callable[[Call], Iterator[T]]) -> AsyncIterator[T]:
        """The items of produce(call), made on a worker thread as the caller. Leaving the iteration early
        (the client went away: the task is cancelled) ends the call, which cancels its engine work."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        call, ended = self.call(caller)

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: the server is stopping
                ended.end()

        def work() -> None:
            try:
                with auth.acting(caller.principal):
                    for item in produce(call):
                        if ended.ended:
                            return
                        put(item)
                put(_END)
            except MintError as err:
                put(err)
            except Exception as err:
                log.exception("an HTTP call failed")
                put(MintError(Code.INTERNAL, f"internal error ({type(err).__name__}); see the server log"))

        self._pool.submit(work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, MintError):
                    raise item
                yield item
        finally:
            ended.end()

    def cut(self, message: str) -> str:
        return cut_message(message, self.limits.max_error_bytes)


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; INVALID_ARGUMENT for anything else."""
    import json

    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise MintError(Code.RESOURCE_EXHAUSTED, f"the request body is over {MAX_BODY_BYTES} bytes, its limit")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise invalid(f"the request body is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise invalid(f"the request body must be a JSON object, not {type(value).__name__}")
    return value
