"""What every HTTP route of the gateway shares.

The servicer's calls block (engine events come from queues, the catalog over gRPC), so they run on a pool
of worker threads, as the principal the caller's key authenticates to — the same authenticator, headers
(`Authorization: Bearer`, `x-mint-tenant`), scopes and request limits as the gRPC side. A hot route takes one
thread hop per request (`serve`: authentication and the route's own work in one worker call) rather than a
hop per step.

A streamed call hands its items to the event loop as they come, in batches: every item that arrived since
the consumer last looked, so a client or loop that falls behind catches up in one write. Worker threads
share one wake-up of the loop (`_Inbox`): an engine step that yields a token to each of 64 streams costs
one cross-thread wake-up, not 64. When the client goes away (or the response ends) the call's end-of-call
callbacks run, which cancel its engine work, as gRPC runs them when a call ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import weakref
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


class _Receiver:
    """One stream's items on the event loop, taken in batches (everything that arrived since the last take)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._items: list = []
        self._waiter: asyncio.Future | None = None

    def deliver(self, item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list:
        if not self._items:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


class _Inbox:
    """Items that worker threads hand to one event loop: the first item after a delivery schedules the next
    delivery, which hands over everything put meanwhile, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[_Receiver, Any]] = []

    def put(self, receiver: _Receiver, item) -> bool:
        """False when the loop is closed (the server is stopping): nobody will take the item."""
        with self._lock:
            self._pending.append((receiver, item))
            if len(self._pending) > 1:
                return not self._loop.is_closed()
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            return False
        return True

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for receiver, item in pending:
            receiver.deliver(item)


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
        admit: Callable[[auth.Principal | None, str], None] | None = None,
    ):
        self.servicer = servicer
        self.admit = admit  # the gRPC server's per-call check (the tenant's request rate), after the scope check
        self.authenticator = authenticator
        self.catalog = catalog
        self.limits = limits or RequestLimits()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="http", initializer=serial_thread)
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()
        self._inboxes_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def check(self, message: Message) -> None:
        """The request limits the gRPC side checks on every request message."""
        check_request(message, self.limits)

    async def caller(self, request: Request, method: str) -> Caller:
        """The request's caller, authenticated, and holding a scope the gRPC `method` (the RPC this route
        does the work of, e.g. /mint.v1.SamplingService/Sample) accepts (mint.scopes)."""
        metadata = _metadata(request)
        _key(metadata)  # a request without a key is refused without a thread hop
        return await self.run(None, self.authenticate, metadata, method)

    def authenticate(self, metadata: list[tuple[str, str]], method: str) -> Caller:
        """`caller`'s work, on a worker thread."""
        key = _key(metadata)
        principal = principal_from_metadata(self.authenticator, metadata)
        scopes.check(principal, method)
        if self.admit is not None:
            self.admit(principal, method)
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

    def serve(self, request: Request, method: str, produce: Callable[[Caller, Call], Iterator[T]]) -> AsyncIterator[list[T]]:
        """The items of produce(caller, call) in batches, as `stream` gives them, with the request authenticated
        (as `caller` does) on the same worker thread that then runs produce: one thread hop for the request."""
        metadata = _metadata(request)
        key = _key(metadata)

        def work(call: Call) -> Iterator[T]:
            caller = self.authenticate(metadata, method)
            with auth.acting(caller.principal):
                yield from produce(caller, call)

        return self._batches(key, work)

    def stream(self, caller: Caller, produce: Callable[[Call], Iterator[T]]) -> AsyncIterator[list[T]]:
        """The items of produce(call), made on a worker thread as the caller, in batches: each batch is every
        item made since the previous one was taken. Leaving the iteration early (the client went away: the task
        is cancelled) ends the call, which cancels its engine work."""

        def work(call: Call) -> Iterator[T]:
            with auth.acting(caller.principal):
                yield from produce(call)

        return self._batches(caller.api_key, work)

    async def _batches(self, api_key: str, produce: Callable[[Call], Iterator[T]]) -> AsyncIterator[list[T]]:
        loop = asyncio.get_running_loop()
        inbox = self._inbox(loop)
        receiver = _Receiver(loop)
        ended = _Ended()
        call = Call(api_key, lambda: None, ended.add)

        def put(item) -> None:
            if not inbox.put(receiver, item):  # the loop closed under us: the server is stopping
                ended.end()

        def work() -> None:
            try:
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
                items = await receiver.take()
                last = items[-1]
                if last is _END or isinstance(last, MintError):
                    if len(items) > 1:
                        yield items[:-1]
                    if last is _END:
                        return
                    raise last
                yield items
        finally:
            ended.end()

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        with self._inboxes_lock:
            inbox = self._inboxes.get(loop)
            if inbox is None:
                inbox = self._inboxes[loop] = _Inbox(loop)
            return inbox

    def cut(self, message: str) -> str:
        return cut_message(message, self.limits.max_error_bytes)


def retry_after(err: MintError) -> dict[str, str]:
    """The Retry-After header (whole seconds) of a refusal that says when to come back (a tenant's quota)."""
    retry_after_s = getattr(err, "retry_after_s", None)
    return {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else {}


def _metadata(request: Request) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in request.headers.items()]


def _key(metadata: list[tuple[str, str]]) -> str:
    key = auth.key_from_metadata(metadata)
    if not key:
        raise MintError(Code.UNAUTHENTICATED, "this call needs an API key (Authorization: Bearer mint_...)")
    return key


async def read_body(request: Request) -> bytes | None:
    """The request's body, or None when it is over MAX_BODY_BYTES (parse_body says so)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return body


def parse_body(body: bytes | None) -> dict[str, Any]:
    """A body from read_body as a JSON object; INVALID_ARGUMENT for anything else."""
    import json

    if body is None:
        raise MintError(Code.RESOURCE_EXHAUSTED, f"the request body is over {MAX_BODY_BYTES} bytes, its limit")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise invalid(f"the request body is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise invalid(f"the request body must be a JSON object, not {type(value).__name__}")
    return value
