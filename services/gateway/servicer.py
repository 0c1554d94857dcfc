"""SamplingService: resolve the policy name, route to an engine through the scheduler, stream the answer;
and a base's tokenizer, from an engine serving that base.

A request that fails because its engine is unreachable before the first token is retried on another
engine; after the first token, the error goes to the client (its tokens cannot be un-sent). Deadlines and
cancellation pass through to the engine.

The gRPC methods are thin: each hands its request and a transport-neutral `Call` to the method that does
the work (`sample`, `compute_logprobs`, `tokenizer`), which the HTTP door (services/gateway/http) calls too.

Adapters are routed and loaded by their adapter key (services/engine/identity.py); what the scheduler
remembers about one (why it could not be loaded) is shared by every tenant who published the same bytes
and config, so errors are worded here with the caller's own address. A wave is its activating tenant's.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator

import grpc

from mint import auth
from mint.adapters.identity import ref_key
from mint.errors import Code, MintError, invalid, not_found
from mint.proto import common_pb2, engine_pb2, gateway_pb2, gateway_pb2_grpc
from mint.proto.common_pb2 import AdapterRef
from mint.server import time_left
from services.gateway.engines import EngineConnector
from services.gateway.resolver import ResolveCache
from services.scheduler.base import LoadItem, Route, Scheduler, WaveStatus
from services.scheduler.quotas import SEQUENCES, QuotaLimiter


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """What the servicer needs of a call, whichever door it came through (gRPC here, HTTP in
    services/gateway/http): the caller's API key, the time left before its deadline, and a way to run
    something when the call ends, however it ends (a client that goes away cancels its engine work)."""

    api_key: str | None
    time_left: Callable[[], float | None]
    add_callback: Callable[[Callable[[], None]], object]

    @classmethod
    def of(cls, context: grpc.ServicerContext) -> Call:
        return cls(auth.key_from_metadata(context.invocation_metadata()), lambda: time_left(context), context.add_callback)

    def key(self) -> str:
        if not self.api_key:
            raise MintError(Code.UNAUTHENTICATED, "this call needs an API key")
        return self.api_key


class SamplingServicer(gateway_pb2_grpc.SamplingServiceServicer):
    def __init__(
        self, resolver: ResolveCache, scheduler: Scheduler, engines: EngineConnector, *, retries: int = 2, quotas: QuotaLimiter | None = None,
    ):
        self.resolver = resolver
        self.scheduler = scheduler
        self.engines = engines
        self.retries = retries
        self.quotas = quotas  # tenants' concurrent sampling sequences: one slot per sample stream, whatever its n

    # --- sampling and scoring ---------------------------------------------------------------------------

    def Sample(self, request, context):
        return self.sample(request, Call.of(context))

    def ComputeLogprobs(self, request, context):
        return self.compute_logprobs(request, Call.of(context))

    def GetTokenizer(self, request, context):
        return self.tokenizer(request, Call.of(context))

    def sample(self, request: gateway_pb2.SampleRequest, call: Call) -> Iterator[common_pb2.SampleChunk]:
        """The chunks of `request`, from the engine a route picks (retried elsewhere while nothing was sent)."""
        slot = self.quotas.hold(SEQUENCES, auth.current_principal().tenant) if self.quotas is not None else None
        if slot is not None:
            call.add_callback(slot.release)  # however the call ends: finished, failed, or cancelled by its client
        try:
            yield from self._sample(request, call)
        finally:
            if slot is not None:
                slot.release()

    def _sample(self, request: gateway_pb2.SampleRequest, call: Call) -> Iterator[common_pb2.SampleChunk]:
        adapter, base = self.target(request.model, request.base_model, call)
        engine_request = engine_pb2.EngineSampleRequest(
            request_id=uuid.uuid4().hex, adapter=adapter, prompt=request.prompt, params=request.params, buffered=request.buffered
        )
        tried: set[str] = set()
        while True:
            route = self._route(adapter, base, tried)
            stream = self.engines.sample(route.address, engine_request, call.time_left())
            call.add_callback(stream.cancel)
            started = False
            try:
                for chunk in stream:
                    started = True
                    yield chunk
                return
            except MintError as err:
                if started or not self._retryable(err, tried, route):
                    raise

    def compute_logprobs(self, request: gateway_pb2.LogprobsRequest, call: Call) -> engine_pb2.LogprobsResponse:
        adapter, base = self.target(request.model, request.base_model, call)
        engine_request = engine_pb2.EngineLogprobsRequest(adapter=adapter, sequences=request.sequences)
        return self._on_an_engine(adapter, base, lambda address: self.engines.compute_logprobs(address, engine_request, call.time_left()))

    def _on_an_engine(self, adapter: AdapterRef | None, base: str, call):
        """`call(address)` on the engine a route picks; an engine lost meanwhile (UNAVAILABLE) is tried no more."""
        tried: set[str] = set()
        while True:
            route = self._route(adapter, base, tried)
            try:
                return call(route.address)
            except MintError as err:
                if not self._retryable(err, tried, route):
                    raise

    def _retryable(self, err: MintError, tried: set[str], route: Route) -> bool:
        tried.add(route.engine_id)
        return err.code is Code.UNAVAILABLE and len(tried) <= self.retries

    def target(self, model: str, base_model: str, call: Call) -> tuple[AdapterRef | None, str]:
        """The adapter `model` names for this caller (None: the base alone) and its base."""
        if not model:
            if not base_model:
                raise invalid("name a policy revision in model (e.g. acme/bot@prod), or a base_model to sample the base alone")
            return None, base_model
        adapter = self.resolver.resolve(model, call.key()).adapter
        if base_model and base_model != adapter.base_model:
            raise invalid(f"{adapter.address} is an adapter for base {adapter.base_model!r}, not {base_model!r}")
        failure = self.scheduler.load_failure(ref_key(adapter))
        if failure:
            raise MintError(Code.FAILED_PRECONDITION, f"{adapter.address} could not be loaded on any engine: {failure}")
        return adapter, adapter.base_model

    def _route(self, adapter: AdapterRef | None, base: str, tried: set[str]) -> Route:
        if adapter is not None:
            return self.scheduler.route(ref_key(adapter), base, exclude=frozenset(tried))
        engines = [e for e in self.scheduler.engines(base) if e.info.engine_id not in tried]
        if not engines:
            raise MintError(Code.UNAVAILABLE, f"no engine is serving base model {base!r}")
        best = min(engines, key=lambda e: e.load.score)
        return Route(engine_id=best.info.engine_id, address=best.info.address, resident=True)

    # --- tokenizers ---------------------------------------------------------------------------------------

    def tokenizer(self, request: engine_pb2.GetBaseTokenizerRequest, call: Call) -> engine_pb2.BaseTokenizer:
        auth.current_principal()
        base = request.base_model or self._only_base()
        if not self.scheduler.engines(base):
            raise not_found(f"no engine serves base model {base!r}; the engines serve {self.bases()}")
        engine_request = engine_pb2.GetBaseTokenizerRequest(base_model=base)
        return self._on_an_engine(None, base, lambda address: self.engines.tokenizer(address, engine_request, call.time_left()))

    def _only_base(self) -> str:
        bases = self.bases()
        if len(bases) == 1:
            return bases[0]
        if not bases:
            raise not_found("no engine serves a base model yet, so there is no tokenizer to give")
        raise invalid(f"name the base_model whose tokenizer you want: the engines serve {bases}")

    def bases(self) -> list[str]:
        """The base models the engines serve now."""
        return sorted({e.info.base_model for e in self.scheduler.engines()})

    # --- waves and engines -----------------------------------------------------------------------------

    def ActivateWave(self, request, context):
        if not request.refs:
            raise invalid("a wave needs at least one revision ref")
        tenant = auth.current_principal().tenant
        key = Call.of(context).key()
        adapters = [self.resolver.resolve(ref, key).adapter for ref in request.refs]
        bases = {a.base_model for a in adapters}
        if len(bases) != 1:
            raise invalid(f"a wave's revisions must share one base model; got {sorted(bases)}")
        unique = {ref_key(a): a for a in adapters}
        items = [LoadItem(adapter_key=k, size_bytes=a.size_bytes, adapter=a.SerializeToString()) for k, a in unique.items()]
        wave_id = self.scheduler.activate_wave(request.name, bases.pop(), items, tenant)
        return wave_pb(self.scheduler.wave_status(wave_id, tenant))

    def GetWave(self, request, context):
        principal = auth.current_principal()
        return wave_pb(self.scheduler.wave_status(request.wave_id, None if principal.privileged else principal.tenant))

    def ListEngines(self, request, context):
        auth.current_principal()
        return gateway_pb2.ListEnginesResponse(
            engines=[
                gateway_pb2.EngineInfo(
                    engine_id=e.info.engine_id, address=e.info.address, base_model=e.info.base_model,
                    device_bytes=e.info.device_bytes, host_bytes=e.info.host_bytes, disk_bytes=e.info.disk_bytes,
                    load=e.load.score,
                )
                for e in self.scheduler.engines()
            ]
        )


def wave_pb(status: WaveStatus) -> gateway_pb2.Wave:
    return gateway_pb2.Wave(
        wave_id=status.wave_id,
        name=status.name,
        total=status.total,
        resident=status.resident,
        failed=status.failed,
        ready=status.ready,
        engines=[
            gateway_pb2.WaveEngineShare(engine_id=s.engine_id, adapters=s.adapters, bytes=s.bytes, resident=s.resident)
            for s in status.engines
        ],
        failures=list(status.failures),
    )

