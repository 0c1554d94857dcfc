"""One eviction policy on every tier: under pressure, least recently used adapters go first, and a pinned or
in-use one is never taken — the disk cache (real files), the host cache (packed adapters) and the device
slots (a real LoRA model), and all three at once through an engine."""

from __future__ import annotations

import hashlib

import pytest

from mint.adapters.packing import pack
from mint.models.loading import load_model, read_config
from services.engine.engine import collect
from services.engine.eviction import LRUBudget
from services.engine.lora import apply_lora
from services.engine.sampling import SamplingParams
from services.engine.slots import SlotPool
from services.engine.tiers import DiskCache, HostCache
from tests.engine.conftest import publish, random_adapter, wait_resident


def blob(i: int) -> tuple[str, bytes]:
    data = bytes([i]) * 1000
    return hashlib.sha256(data).hexdigest(), data


def test_the_policy_takes_the_least_recently_used_and_never_a_pinned_or_in_use_key():
    policy = LRUBudget(3)
    for key in "abc":
        policy.add(key, 1)
    policy.touch("a")  # b is now the least recently used
    assert policy.evict_for(1) == ["b"] and policy.keys() == {"a", "c"}
    policy.pin("c", True)
    policy.acquire("a")
    policy.add("d", 1)
    assert policy.evict_for(2) == ["d"]  # all it may take: the tier stays over budget
    assert policy.keys() == {"a", "c"} and policy.evict_for(3) == []
    policy.release("a")
    policy.pin("c", False)
    assert policy.evict_for(3) == ["c", "a"]  # c came before a's last use
    policy.pin("x", True)  # pins and uses belong to keys, before their entries arrive
    policy.acquire("y")
    policy.add("x", 2)
    policy.add("y", 2)
    policy.add("z", 1)
    assert policy.evict_for(0) == ["z"] and policy.keys() == {"x", "y"} and policy.used == 4


def test_the_disk_cache_never_deletes_a_pinned_or_in_use_file(tmp_path):
    cache = DiskCache(tmp_path / "cache", budget_bytes=3000)
    blobs = [blob(i) for i in range(8)]
    for sha, data in blobs[:3]:
        cache.write(sha, [data])
    pinned, reading, *_ = (sha for sha, _ in blobs)
    cache.pin(pinned, True)
    cache.acquire(reading)  # a loader is between finding the file and parsing it
    for sha, data in blobs[3:]:
        cache.write(sha, [data])
        assert cache.path(pinned).read_bytes() == blobs[0][1] and cache.path(reading).read_bytes() == blobs[1][1]
    assert pinned in cache and reading in cache and cache.used_bytes == 3000
    assert sorted(p.stem for p in cache.root.glob("*.safetensors")) == sorted([pinned, reading, blobs[-1][0]])
    cache.release(reading)
    cache.pin(pinned, False)
    for sha, data in blobs[3:5]:
        cache.write(sha, [data])
    assert pinned not in cache and reading not in cache and not cache.path(pinned).exists()


@pytest.fixture
def packed_adapters(tiny_base_dir):
    config = read_config(tiny_base_dir)
    return [pack(random_adapter(config, rank=2, seed=i), config) for i in range(6)]


def test_the_host_cache_never_drops_a_pinned_or_in_use_adapter(packed_adapters):
    size = packed_adapters[0].nbytes
    host = HostCache(budget_bytes=3 * size)
    host.pin("pinned", True)
    host.put("pinned", packed_adapters[0])
    host.put("in-use", packed_adapters[1])
    host.policy.acquire("in-use")
    for i, adapter in enumerate(packed_adapters[2:]):
        host.put(f"other-{i}", adapter)
        assert host.get("pinned", touch=False) is packed_adapters[0] and host.get("in-use", touch=False) is packed_adapters[1]
    assert host.keys() == {"pinned", "in-use", "other-3"} and host.used_bytes == 3 * size
    host.policy.release("in-use")
    host.pin("pinned", False)
    host.put("next", packed_adapters[2])
    host.put("last", packed_adapters[3])
    assert host.keys() == {"other-3", "next", "last"}


def test_the_slots_never_reuse_a_pinned_or_in_use_adapters_slot(tiny_base_dir, packed_adapters):
    slots = SlotPool(apply_lora(load_model(tiny_base_dir), num_slots=2, max_rank=8))
    assert slots.install("pinned", packed_adapters[0]) == 1 and slots.install("in-use", packed_adapters[1]) == 2
    slots.pin("pinned", True)
    assert slots.acquire("in-use") == 2
    assert slots.install("newcomer", packed_adapters[2]) == 0  # every slot busy: it waits
    assert slots.occupants() == {"pinned": 1, "in-use": 2}
    slots.release(2)
    assert slots.install("newcomer", packed_adapters[2]) == 2  # the idle adapter's slot, not the pinned one's
    assert slots.occupants() == {"pinned": 1, "newcomer": 2}
    assert int(slots.lora.batch.ranks["self_attn.qkv_proj"][2]) == 2


def test_a_pinned_adapter_stays_in_every_tier_of_an_engine_under_pressure(tiny_base_dir, make_engine, source):
    config = read_config(tiny_base_dir)
    adapters = [random_adapter(config, rank=1, seed=i) for i in range(12)]
    file_bytes = len(adapters[0].to_safetensors())
    packed_bytes = pack(adapters[0], config).nbytes
    engine = make_engine(tiny_base_dir, max_lora_rank=1, max_slots=2, host_budget_bytes=3 * packed_bytes, disk_budget_bytes=3 * file_bytes)
    pinned, *others = (publish(source, weights, f"t/p{i}@1") for i, weights in enumerate(adapters))
    residency = engine.residency
    residency.wait(pinned, residency.prefetch(pinned, pin=True), 30)
    wait_resident(engine, pinned)
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    for spec in others:
        assert len(collect(engine.sample(spec, [1, 2, 3], params), 60)[0].token_ids) == 2
        assert residency.placement(pinned.key).tier == "device" and pinned.key in residency.host and pinned.sha256 in residency.disk
    assert residency.placement(pinned.key).pinned and residency.counters.loads_completed == len(adapters)
    assert len(residency.disk) <= 3 and len(residency.host) <= 3
    residency.pin(pinned.sha256, False)
    for spec in others[:4]:
        collect(engine.sample(spec, [1, 2, 3], params), 60)
    assert residency.tier_of(pinned.key) in ("disk", "none")  # unpinned, it is evicted like any other
