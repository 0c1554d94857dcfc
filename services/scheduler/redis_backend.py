"""The fleet scheduler: the contract on Redis, shared by every gateway and engine.

Redis holds only what can be rebuilt. After a Redis restart every key is gone: heartbeats answer
False, engines register again and re-report what they hold, reads treat missing keys as empty, and
waves in flight are lost (their status is NOT_FOUND). Connection failures surface as UNAVAILABLE.

Key layout (all under `prefix`):

    engine:info                hash  engine id -> EngineInfo (JSON)
    engine:seen                zset  engine id -> last heartbeat (unix s); the reaper's index
    engine:load                hash  engine id -> [running, waiting, tokens_per_s] (JSON)
    engine:base:<base>         set   engine ids serving a base model
    resident:<engine>          set   adapter keys the engine holds (its last report, plus acked loads)
    holders:<adapter key>      set   engine ids holding the adapter (the reverse index)
    assigned:<adapter key>     str   engine of the adapter's first placement (TTL assignment_ttl_s)
    requests:<adapter key>:<second>
                               int   requests routed in that second (TTL hot_window_s + 1)
    loads:<engine>             stream, group "loaders", consumer = engine id; one entry per load
    loads:dead                 stream of loads that failed max_attempts times, with reason and engine
    reaped                     zset  [detached stream, engine, base] (JSON) -> when its drain started
    reaped:<engine>:<token>    a removed engine's stream, detached until its loads are re-placed
    failure:<adapter key>      str   why the adapter could not be loaded (TTL failure_ttl_s); names no address
    wave:<id>                  hash  name, base_model, tenant (whose wave it is)
    wave:<id>:engine           hash  adapter key -> engine the item is placed on
    wave:<id>:state            hash  adapter key -> queued | resident | failed:<reason>
    wave:<id>:item             hash  adapter key -> the item (JSON), to load it again if its engine dies
    wave:<id>:bytes            hash  engine id -> bytes of the wave placed there
    waves:<base>               hash  <tenant>/<wave name> -> id of the tenant's open wave of that name

Adapter keys (services/engine/identity.py) are `<sha256>:<config digest>`.

Wave keys expire after wave_ttl_s (Redis time); everything else keyed by engine is removed with it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable

import redis
from redis.client import Pipeline

from mint.errors import Code, MintError, invalid
from services.scheduler import placement, redis_scripts
from services.scheduler.base import EngineInfo, EngineLoad, LiveEngine, LoadItem, Route, WaveStatus
from services.scheduler.config import SchedulerConfig
from services.scheduler.errors import no_engine, no_wave, not_registered, orphaned
from services.scheduler.waves import ItemState, distinct, summarize

log = logging.getLogger(__name__)

GROUP = "loaders"
DEAD_LETTER_MAXLEN = 100_000
_PAGE = 500


def _translated(method):
    """Redis being unreachable is the client's UNAVAILABLE, not an internal error."""

    @functools.wraps(method)
    def wrapper(self: RedisScheduler, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            message = f"the scheduler's Redis at {self.where} is unreachable: {err}"
            raise MintError(Code.UNAVAILABLE, message) from err

    return wrapper


class RedisScheduler:
    def __init__(
        self,
        redis_url: str | redis.Redis,
        prefix: str = "mint:",
        heartbeat_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        **options,
    ):
        self.config = SchedulerConfig(heartbeat_s=heartbeat_s, **options)
        self.heartbeat_s = heartbeat_s
        if isinstance(redis_url, str):
            self.redis = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
            self.where = redis_url
        else:
            self.redis = redis_url
            kwargs = redis_url.get_connection_kwargs()
            self.where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
        if self.redis.get_connection_kwargs().get("decode_responses"):
            raise invalid("RedisScheduler needs a client with decode_responses=False: loads carry raw bytes")
        self.prefix = prefix
        self._clock = clock
        self._heartbeat = self.redis.register_script(redis_scripts.HEARTBEAT)
        self._set_resident = self.redis.register_script(redis_scripts.SET_RESIDENT)
        self._drop_engine = self.redis.register_script(redis_scripts.DROP_ENGINE)
        self._lease_drain = self.redis.register_script(redis_scripts.LEASE_DRAIN)
        self._enqueue = self.redis.register_script(redis_scripts.ENQUEUE)
        self._loaded = self.redis.register_script(redis_scripts.LOADED)
        self._wave_item = self.redis.register_script(redis_scripts.WAVE_ITEM)
        self._close_wave = self.redis.register_script(redis_scripts.CLOSE_WAVE)
        self._route_state = self.redis.register_script(redis_scripts.ROUTE_STATE)

    def close(self) -> None:
        self.redis.close()

    # --- key layout (see the module docstring) ---------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _stream(self, engine_id: str) -> str:
        return self._key("loads", engine_id)

    # --- engine registry -------------------------------------------------------------------------------
    @_translated
    def register(self, info: EngineInfo) -> None:
        if info.engine_id == "dead":
            raise invalid("engine id 'dead' is reserved (loads:dead is the dead-letter stream); pick another")
        previous = self.redis.hget(self._key("engine", "info"), info.engine_id)
        pipe = self.redis.pipeline()
        if previous is not None:  # registering again may change the base
            pipe.srem(self._key("engine", "base", json.loads(previous)["base_model"]), info.engine_id)
        pipe.hset(self._key("engine", "info"), info.engine_id, json.dumps(dataclasses.asdict(info)))
        pipe.zadd(self._key("engine", "seen"), {info.engine_id: self._clock()})
        pipe.hset(self._key("engine", "load"), info.engine_id, _encode_load(EngineLoad()))
        pipe.sadd(self._key("engine", "base", info.base_model), info.engine_id)
        pipe.execute()
        try:
            self.redis.xgroup_create(self._stream(info.engine_id), GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._redeliver_pending(info.engine_id)

    @_translated
    def heartbeat(self, engine_id: str, load: EngineLoad) -> bool:
        keys = [self._key("engine", "info"), self._key("engine", "seen"), self._key("engine", "load")]
        return bool(self._heartbeat(keys, [engine_id, repr(self._clock()), _encode_load(load)]))

    @_translated
    def deregister(self, engine_id: str) -> None:
        member = self._drop(engine_id, cutoff=None)
        if member is not None:
            self._drain(member)

    @_translated
    def engines(self, base_model: str | None = None) -> list[LiveEngine]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._key("engine", "info"))
        pipe.zrangebyscore(self._key("engine", "seen"), self._cutoff(), "+inf", withscores=True)
        pipe.hgetall(self._key("engine", "load"))
        infos, seen, loads = pipe.execute()
        engines = []
        for engine_id, last_seen in seen:
            raw = infos.get(engine_id)
            if raw is None:
                continue
            info = EngineInfo(**json.loads(raw))
            if base_model in (None, info.base_model):
                engines.append(LiveEngine(info, _decode_load(loads.get(engine_id)), last_seen))
        return sorted(engines, key=lambda e: e.info.engine_id)

    @_translated
    def reap(self) -> list[str]:
        now = self._clock()
        cutoff = now - self.config.dead_after_s
        stale = self.redis.zrangebyscore(self._key("engine", "seen"), "-inf", f"({cutoff!r}")
        removed = []
        for engine_id in sorted(e.decode() for e in stale):
            member = self._drop(engine_id, cutoff=cutoff)
            if member is not None:
                removed.append((engine_id, member))
        for _, member in removed:
            self._drain(member)
        # A reaper that died between detaching a stream and re-placing its loads left it behind.
        for member in self.redis.zrangebyscore(self._key("reaped"), "-inf", f"({cutoff!r}"):
            if self._lease_drain([self._key("reaped")], [member, repr(cutoff), repr(now)]):
                self._drain(member.decode())
        return [engine_id for engine_id, _ in removed]

    # --- placement and routing -------------------------------------------------------------------------
    @_translated
    def set_resident(self, engine_id: str, adapter_keys: Iterable[str]) -> None:
        keys = [self._key("engine", "info"), self._key("resident", engine_id)]
        self._set_resident(keys, [engine_id, self._key("holders", ""), *set(adapter_keys)])

    @_translated
    def holders(self, adapter_key: str) -> list[str]:
        return sorted(e.decode() for e in self.redis.smembers(self._key("holders", adapter_key)))

    @_translated
    def resident(self, engine_id: str) -> frozenset[str]:
        return frozenset(k.decode() for k in self.redis.smembers(self._key("resident", engine_id)))

    @_translated
    def route(self, adapter_key: str, base_model: str, exclude: frozenset[str] = frozenset()) -> Route:
        now = self._clock()
        window = self.config.hot_window_s
        keys = [
            self._key("engine", "base", base_model),
            self._key("engine", "seen"),
            self._key("engine", "load"),
            self._key("engine", "info"),
            self._key("holders", adapter_key),
            self._key("assigned", adapter_key),
            *(self._key("requests", adapter_key, str(int(now) - i)) for i in range(window)),
        ]
        cutoff = repr(now - self.config.dead_after_s)
        live, raw_loads, raw_infos, holders, assigned, requests = self._route_state(keys, [cutoff, window + 1])
        loads, infos = {}, {}
        for raw_id, raw_load, raw_info in zip(live, raw_loads, raw_infos, strict=True):
            engine_id = raw_id.decode()
            if engine_id not in exclude:
                loads[engine_id], infos[engine_id] = _decode_load(raw_load).score, raw_info
        if not loads:
            raise no_engine(base_model, exclude)
        choice = placement.choose_route(
            adapter_key,
            loads,
            {h.decode() for h in holders},
            assigned.decode() or None,
            placement.is_hot(requests, self.config.hot_requests),
            self.config.load_factor,
        )
        engine_id = choice.engine_id
        if choice.placed:
            ttl_ms = max(1, int(self.config.assignment_ttl_s * 1000))
            # Set-if-absent: of gateways placing the same new adapter at once, the first one wins.
            earlier = self.redis.set(self._key("assigned", adapter_key), engine_id, nx=True, get=True, px=ttl_ms)
            if earlier is not None and earlier.decode() in loads:
                engine_id = earlier.decode()
        return Route(engine_id, json.loads(infos[engine_id])["address"], choice.resident)

    # --- waves -----------------------------------------------------------------------------------------
    @_translated
    def activate_wave(self, name: str, base_model: str, items: list[LoadItem], tenant: str) -> str:
        wave_id = uuid.uuid4().hex
        items = distinct(items, wave_id)
        free = self._free_bytes(base_model, replacing=_open_field(tenant, name))
        if not free:
            raise no_engine(base_model, frozenset())
        plan = placement.spread(items, free)
        ttl_ms = int(self.config.wave_ttl_s * 1000)
        wave = self._key("wave", wave_id)
        pipe = self.redis.pipeline()
        pipe.hset(wave, mapping={"name": name, "base_model": base_model, "tenant": tenant})
        if plan:
            placed_bytes: dict[str, int] = {}
            for item, engine_id in plan:
                placed_bytes[engine_id] = placed_bytes.get(engine_id, 0) + item.size_bytes
            pipe.hset(f"{wave}:engine", mapping={item.adapter_key: engine_id for item, engine_id in plan})
            pipe.hset(f"{wave}:state", mapping={item.adapter_key: ItemState.QUEUED.value for item in items})
            pipe.hset(f"{wave}:item", mapping={item.adapter_key: _encode_wave_item(item) for item in items})
            pipe.hset(f"{wave}:bytes", mapping=placed_bytes)
        for key in (wave, f"{wave}:engine", f"{wave}:state", f"{wave}:item", f"{wave}:bytes"):
            pipe.pexpire(key, ttl_ms)
        pipe.hset(self._key("waves", base_model), _open_field(tenant, name), wave_id)
        pipe.pexpire(self._key("waves", base_model), ttl_ms)
        queued = [self._enqueue_in(pipe, engine_id, item) for item, engine_id in plan]
        self._commit(pipe, queued)
        return wave_id

    @_translated
    def wave_status(self, wave_id: str, tenant: str | None) -> WaveStatus:
        wave = self._key("wave", wave_id)
        pipe = self.redis.pipeline(transaction=False)
        for key in (wave, f"{wave}:engine", f"{wave}:state", f"{wave}:bytes"):
            pipe.hgetall(key)
        pipe.zrangebyscore(self._key("engine", "seen"), self._cutoff(), "+inf")
        meta, engine_of, state_of, placed_bytes, live = pipe.execute()
        if not meta or tenant not in (None, meta[b"tenant"].decode()):
            raise no_wave(wave_id, self.config.wave_ttl_s)
        states, reasons = {}, {}
        for adapter_key, raw in state_of.items():
            state, _, reason = raw.decode().partition(":")
            states[adapter_key.decode()] = ItemState(state)
            if reason:
                reasons[adapter_key.decode()] = reason
        return summarize(
            wave_id,
            meta[b"name"].decode(),
            {adapter_key.decode(): engine_id.decode() for adapter_key, engine_id in engine_of.items()},
            states,
            {engine_id.decode(): int(n) for engine_id, n in placed_bytes.items()},
            reasons,
            {engine_id.decode() for engine_id in live},
        )

    @_translated
    def open_waves(self, base_model: str) -> list[tuple[str, str]]:
        fields = self.redis.hgetall(self._key("waves", base_model))
        return sorted((field.decode().partition("/")[0], wave_id.decode()) for field, wave_id in fields.items())

    # --- load queues -----------------------------------------------------------------------------------
    @_translated
    def enqueue_load(self, engine_id: str, item: LoadItem) -> None:
        keys = [self._key("engine", "info"), self._stream(engine_id)]
        if self._enqueue(keys, [engine_id, GROUP, *_flatten(_encode_item(item))]) is None:
            raise not_registered(engine_id)

    @_translated
    def next_loads(self, engine_id: str, count: int, block_s: float) -> list[tuple[str, LoadItem]]:
        block_ms = max(1, round(block_s * 1000)) if block_s > 0 else None  # BLOCK 0 would wait forever
        try:
            stream = {self._stream(engine_id): ">"}
            reply = self.redis.xreadgroup(GROUP, engine_id, stream, count=count, block=block_ms)
        except redis.ResponseError as err:
            if str(err).startswith("NOGROUP"):
                # Not registered (reaped, or Redis restarted): nothing can be queued for it until it
                # registers again. Waiting out block_s, as the read would have, keeps its loop from spinning.
                time.sleep(max(block_s, 0.0))
                return []
            if str(err).startswith("UNBLOCKED"):  # reaped while waiting: its stream was detached
                return []
            raise
        entries = [entry for _, stream_entries in reply or () for entry in stream_entries]
        return [(entry_id.decode(), _decode_item(fields)) for entry_id, fields in entries]

    @_translated
    def ack_load(self, engine_id: str, entry_id: str, item: LoadItem, error: str | None = None) -> None:
        pipe = self.redis.pipeline()
        pipe.xack(self._stream(engine_id), GROUP, entry_id)
        pipe.xdel(self._stream(engine_id), entry_id)
        acked, _ = pipe.execute()
        if not acked:
            return  # already re-placed (engine reaped or registered again): another entry owns the load
        if error is None:
            pipe = self.redis.pipeline()
            keys = [
                self._key("engine", "info"),
                self._key("resident", engine_id),
                self._key("holders", item.adapter_key),
                self._key("failure", item.adapter_key),
            ]
            self._loaded(keys, [engine_id, item.adapter_key], client=pipe)
            self._wave_item_in(pipe, item, engine_id, ItemState.RESIDENT.value, engine_id)
            pipe.execute()
            return
        item = dataclasses.replace(item, attempts=item.attempts + 1)
        if item.attempts < self.config.max_attempts:
            raw_info = self.redis.hget(self._key("engine", "info"), engine_id)
            free = self._free_bytes(json.loads(raw_info)["base_model"]) if raw_info is not None else {}
            others = {e: f for e, f in free.items() if e != engine_id} or free
            if others:
                [(_, target)] = placement.spread([item], others)
                pipe = self.redis.pipeline()
                queued = [self._enqueue_in(pipe, target, item)]
                self._wave_item_in(pipe, item, engine_id, ItemState.QUEUED.value, target)
                self._commit(pipe, queued)
                return
        pipe = self.redis.pipeline()
        self._dead_letter_in(pipe, engine_id, item, error)
        pipe.execute()

    @_translated
    def load_failure(self, adapter_key: str) -> str | None:
        reason = self.redis.get(self._key("failure", adapter_key))
        return reason.decode() if reason is not None else None

    # --- internals -------------------------------------------------------------------------------------
    def _cutoff(self) -> float:
        return self._clock() - self.config.dead_after_s

    def _drop(self, engine_id: str, cutoff: float | None) -> str | None:
        """Remove an engine and detach its stream (see DROP_ENGINE); the drain record, or None when it
        was not there to drop (unknown, seen again since `cutoff`, or dropped by another caller)."""
        keys = [
            self._key("engine", "info"),
            self._key("engine", "seen"),
            self._key("engine", "load"),
            self._key("resident", engine_id),
            self._stream(engine_id),
            self._key("reaped", engine_id, uuid.uuid4().hex),
            self._key("reaped"),
        ]
        since = "" if cutoff is None else repr(cutoff)
        prefixes = [self._key("holders", ""), self._key("engine", "base", "")]
        member = self._drop_engine(keys, [engine_id, *prefixes, since, repr(self._clock())])
        return member.decode() if member is not None else None

    def _drain(self, member: str) -> None:
        """Re-place what a removed engine was to load, and the open-wave adapters it held, onto the live
        engines of its base (dead letters when there are none); then forget its detached stream."""
        detached, gone, base_model = json.loads(member)
        items = self._detached_loads(detached) + self._held_wave_items(gone, base_model)
        free = self._free_bytes(base_model)
        pipe = self.redis.pipeline()
        queued = []
        if free:
            for item, engine_id in placement.spread(items, free):
                queued.append(self._enqueue_in(pipe, engine_id, item))
                self._wave_item_in(pipe, item, gone, ItemState.QUEUED.value, engine_id)
        else:
            for item in items:
                self._dead_letter_in(pipe, gone, item, orphaned(gone, base_model), failed_load=False)
        pipe.delete(detached)
        pipe.zrem(self._key("reaped"), member)
        self._commit(pipe, queued)

    def _detached_loads(self, stream: str) -> list[LoadItem]:
        """Every entry left in a detached stream. Acks delete their entries, so what is left is exactly
        the loads delivered but not acked and those never delivered."""
        items: list[LoadItem] = []
        start = "-"
        while page := self.redis.xrange(stream, start, "+", count=_PAGE):
            items += [_decode_item(fields) for _, fields in page]
            start = f"({page[-1][0].decode()}"
        return items

    def _held_wave_items(self, engine_id: str, base_model: str) -> list[LoadItem]:
        """Items of the base's open waves that were resident on the engine: loaded again elsewhere so
        the wave stays warm."""
        wave_ids = [w.decode() for w in self.redis.hvals(self._key("waves", base_model))]
        pipe = self.redis.pipeline(transaction=False)
        for wave_id in wave_ids:
            pipe.hgetall(self._key("wave", wave_id, "engine"))
            pipe.hgetall(self._key("wave", wave_id, "state"))
        replies = pipe.execute()
        wanted: dict[str, list[bytes]] = {}
        for wave_id, engine_of, state_of in zip(wave_ids, replies[::2], replies[1::2], strict=True):
            adapter_keys = [
                adapter_key for adapter_key, holder in engine_of.items()
                if holder.decode() == engine_id and state_of.get(adapter_key) == ItemState.RESIDENT.value.encode()
            ]
            if adapter_keys:
                wanted[wave_id] = adapter_keys
        if not wanted:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for wave_id, adapter_keys in wanted.items():
            pipe.hmget(self._key("wave", wave_id, "item"), adapter_keys)
        return [
            _decode_wave_item(adapter_key.decode(), raw, wave_id)
            for (wave_id, adapter_keys), raws in zip(wanted.items(), pipe.execute(), strict=True)
            for adapter_key, raw in zip(adapter_keys, raws, strict=True)
            if raw is not None
        ]

    def _free_bytes(self, base_model: str, replacing: str | None = None) -> dict[str, int]:
        """Host capacity left on each live engine of the base after the bytes its open waves placed
        there (the open wave `replacing`, a `_open_field`, excluded: the new wave of that name takes its place)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(self._key("engine", "base", base_model))
        pipe.zrangebyscore(self._key("engine", "seen"), self._cutoff(), "+inf")
        pipe.hgetall(self._key("waves", base_model))
        members, live, open_waves = pipe.execute()
        engine_ids = sorted(e.decode() for e in members & set(live))
        if not engine_ids:
            return {}
        waves = {field.decode(): wave_id.decode() for field, wave_id in open_waves.items()}
        waves.pop(replacing, None)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self._key("engine", "info"), engine_ids)
        for wave_id in waves.values():
            pipe.exists(self._key("wave", wave_id))
            pipe.hgetall(self._key("wave", wave_id, "bytes"))
        infos, *replies = pipe.execute()
        claimed: dict[str, int] = {}
        for (field, wave_id), exists, placed in zip(waves.items(), replies[::2], replies[1::2], strict=True):
            if not exists:
                self._close_wave([self._key("waves", base_model)], [field, wave_id])
            for engine_id, n in placed.items():
                claimed[engine_id.decode()] = claimed.get(engine_id.decode(), 0) + int(n)
        return {
            engine_id: json.loads(raw)["host_bytes"] - claimed.get(engine_id, 0)
            for engine_id, raw in zip(engine_ids, infos, strict=True)
            if raw is not None
        }

    def _redeliver_pending(self, engine_id: str) -> None:
        """Loads a previous incarnation of the engine took but never acked go back to the end of its
        queue as new entries (the old ids' acks are then ignored)."""
        stream = self._stream(engine_id)
        start = "0-0"
        while True:
            start, claimed, _ = self.redis.xautoclaim(stream, GROUP, engine_id, 0, start, count=_PAGE)
            if claimed:
                pipe = self.redis.pipeline()
                for entry_id, fields in claimed:
                    self._enqueue_in(pipe, engine_id, _decode_item(fields))
                    pipe.xack(stream, GROUP, entry_id)
                    pipe.xdel(stream, entry_id)
                pipe.execute()
            if start == b"0-0":
                return

    def _enqueue_in(self, pipe: Pipeline, engine_id: str, item: LoadItem) -> tuple[int, str, LoadItem]:
        """Queue a load in a transaction; `_commit` checks that its engine was still there."""
        position = len(pipe)
        keys = [self._key("engine", "info"), self._stream(engine_id)]
        self._enqueue(keys, [engine_id, GROUP, *_flatten(_encode_item(item))], client=pipe)
        return position, engine_id, item

    def _commit(self, pipe: Pipeline, queued: list[tuple[int, str, LoadItem]]) -> None:
        """Run the transaction; loads whose engine left between planning and queueing are dead letters
        (rare: the engine went away within a round trip)."""
        results = pipe.execute()
        lost = [(engine_id, item) for position, engine_id, item in queued if results[position] is None]
        if lost:
            pipe = self.redis.pipeline()
            for engine_id, item in lost:
                reason = f"engine {engine_id} left before the load was queued"
                self._dead_letter_in(pipe, engine_id, item, reason, failed_load=False)
            pipe.execute()

    def _wave_item_in(self, pipe: Pipeline, item: LoadItem, engine_id: str, state: str, target: str) -> None:
        if not item.wave_id:
            return
        wave = self._key("wave", item.wave_id)
        keys = [f"{wave}:engine", f"{wave}:state", f"{wave}:bytes"]
        args = [item.adapter_key, engine_id, state, target, item.size_bytes, -item.size_bytes]
        self._wave_item(keys, args, client=pipe)

    def _dead_letter_in(self, pipe: Pipeline, engine_id: str, item: LoadItem, reason: str, *, failed_load: bool = True) -> None:
        """Give up on a load. Only a load that itself failed marks the adapter failed for requesters; one
        orphaned because no engine was left says nothing about the adapter."""
        log.warning("load of %s dead-lettered (last on %s): %s", item.adapter_key, engine_id, reason)
        fields = {**_encode_item(item), "reason": reason, "engine": engine_id}
        pipe.xadd(self._key("loads", "dead"), fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        if failed_load:
            pipe.set(self._key("failure", item.adapter_key), reason, px=max(1, int(self.config.failure_ttl_s * 1000)))
        self._wave_item_in(pipe, item, engine_id, f"{ItemState.FAILED.value}:{reason}", engine_id)


def _open_field(tenant: str, name: str) -> str:
    """A tenant's open wave's field in waves:<base>: tenant names hold no "/" (mint.names)."""
    return f"{tenant}/{name}"


def _encode_load(load: EngineLoad) -> str:
    return json.dumps([load.running, load.waiting, load.tokens_per_s, list(load.tier_bytes)])


def _decode_load(raw: bytes | None) -> EngineLoad:
    if not raw:
        return EngineLoad()
    running, waiting, tokens_per_s, *tiers = json.loads(raw)  # an engine of before tier_bytes sends three
    return EngineLoad(running, waiting, tokens_per_s, tuple(tiers[0]) if tiers else (0, 0, 0))


def _encode_item(item: LoadItem) -> dict[str, str | bytes | int]:
    return {
        "adapter_key": item.adapter_key,
        "size_bytes": item.size_bytes,
        "adapter": item.adapter,
        "wave_id": item.wave_id,
        "attempts": item.attempts,
    }


def _decode_item(fields: dict[bytes, bytes]) -> LoadItem:
    return LoadItem(
        adapter_key=fields[b"adapter_key"].decode(),
        size_bytes=int(fields[b"size_bytes"]),
        adapter=fields[b"adapter"],
        wave_id=fields[b"wave_id"].decode(),
        attempts=int(fields[b"attempts"]),
    )


def _flatten(fields: dict[str, str | bytes | int]) -> list[str | bytes | int]:
    return [part for pair in fields.items() for part in pair]


def _encode_wave_item(item: LoadItem) -> str:
    return json.dumps({"size_bytes": item.size_bytes, "adapter": base64.b64encode(item.adapter).decode()})


def _decode_wave_item(adapter_key: str, raw: bytes, wave_id: str) -> LoadItem:
    fields = json.loads(raw)
    return LoadItem(adapter_key, fields["size_bytes"], base64.b64decode(fields["adapter"]), wave_id=wave_id)
