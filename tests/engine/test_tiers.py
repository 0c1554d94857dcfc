"""Tier behaviour: a sweep through far more adapters than the budgets hold stays bounded and answers all."""

from __future__ import annotations

import os

import psutil
import pytest

from mint.adapters.packing import pack
from mint.blobs import LocalBlobStore, receive
from mint.errors import MintError
from mint.models.loading import read_config
from services.engine.config import EngineConfig
from services.engine.engine import Engine, collect
from services.engine.sampling import SamplingParams
from services.engine.sources import BlobStoreSource
from services.engine.tiers import DiskCache
from tests.engine.conftest import MemorySource, publish, random_adapter, wait_resident


def test_sweeping_2000_adapters_through_budgets_for_64(tiny_base_dir, make_engine, source):
    config = read_config(tiny_base_dir)
    adapters = [random_adapter(config, rank=1, seed=i) for i in range(2000)]
    specs = [publish(source, weights, f"t/sweep-{i}@1") for i, weights in enumerate(adapters)]
    file_bytes = len(next(iter(source.blobs.values())))
    packed_bytes = pack(adapters[0], config).nbytes
    del adapters
    engine = make_engine(
        tiny_base_dir, max_lora_rank=1, max_slots=16, host_budget_bytes=64 * packed_bytes, disk_budget_bytes=64 * file_bytes
    )
    assert engine.lora.num_slots == 16
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    process = psutil.Process(os.getpid())
    rss_after_first = 0
    for start in range(0, len(specs), 100):
        requests = [engine.sample(spec, [1, 2, 3, 4], params) for spec in specs[start : start + 100]]
        for request in requests:
            assert len(collect(request, 120)[0].token_ids) == 2
        residency = engine.residency
        assert residency.host.used_bytes <= residency.host.budget_bytes
        assert residency.disk.used_bytes <= residency.disk.budget_bytes
        assert len(list(residency.disk.root.glob("*.safetensors"))) <= 64
        assert len(residency.slots) <= 16
        if start == 100:
            rss_after_first = process.memory_info().rss
    assert engine.residency.counters.loads_completed >= 2000 - 64
    assert engine.requests_finished == 2000
    # Bounded tiers mean flat memory: nothing grows with the number of adapters seen.
    assert process.memory_info().rss < rss_after_first + 64 * 1024**2
    # An adapter swept out long ago comes back on request.
    wait_resident(engine, specs[0])


def test_disk_cache_links_verified_files_and_evicting_them_leaves_the_original(tmp_path):
    originals = []
    for i in range(3):
        original = tmp_path / "store" / f"blob-{i}"
        original.parent.mkdir(exist_ok=True)
        original.write_bytes(bytes([i]) * 1000)
        originals.append(original)
    cache = DiskCache(tmp_path / "cache", budget_bytes=2000)
    for i, original in enumerate(originals):
        linked = cache.link(f"{i:064x}", original)
        assert linked is not None and linked.read_bytes() == original.read_bytes()
        assert linked.stat().st_ino == original.stat().st_ino  # a link, not a copy
    assert f"{0:064x}" not in cache and cache.used_bytes == 2000  # the oldest was evicted...
    assert all(original.read_bytes() for original in originals)  # ...from the cache only
    assert cache.link(f"{9:064x}", tmp_path / "store" / "missing") is None  # the caller fetches instead


def test_an_engine_reads_a_shared_blob_store_and_downloads_only_what_it_lacks(tiny_base_dir, tmp_path, source):
    with pytest.raises(MintError, match="not a directory"):
        LocalBlobStore(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()  # a reader never creates the catalog's store
    store = LocalBlobStore(tmp_path / "store")
    config = EngineConfig(model_path=str(tiny_base_dir), cache_dir=str(tmp_path / "cache"), max_lora_rank=8, kv_cache_bytes=8 * 1024**2)
    engine = Engine(config, BlobStoreSource(LocalBlobStore(tmp_path / "store", create=False), fallback=source)).start()
    try:
        weights = random_adapter(engine.model_config, rank=4, seed=1)
        staged = receive([weights.to_safetensors()], store.staging_dir(), max_bytes=1 << 24)
        store.put(staged)
        shared = publish(MemorySource(), weights, "acme/shared@1")  # the same bytes: its spec
        elsewhere = publish(source, random_adapter(engine.model_config, rank=4, seed=2), "acme/elsewhere@1")
        for spec in (shared, elsewhere):
            wait_resident(engine, spec)
        assert source.fetches == 1  # only the blob the store lacks came from the fallback
        assert engine.residency.disk.path(shared.sha256).stat().st_ino == store.path(shared.sha256).stat().st_ino
        answers = [collect(engine.sample(spec, [1, 2, 3], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)))[0] for spec in (shared, elsewhere)]
        assert all(len(answer.token_ids) == 4 for answer in answers)
    finally:
        engine.stop()
