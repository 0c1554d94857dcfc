"""Cold adapter load latency: from the engine's local disk cache into a device slot.

    python -m bench.adapter_load            # SmolLM2-135M shape
    python -m bench.adapter_load --quick    # the tiny preset

Cold means the adapter's safetensors file is in the engine's disk cache but neither in host memory nor in a
slot. One sample: the clock starts, `residency.prefetch(spec)` asks for the adapter, the bench blocks on the
returned future (the loader pool's part, with no polling thread competing for the GIL), then polls until
`residency.tier_of` says "device", i.e. until the engine's step thread has copied it into a slot, and the
clock stops. `residency.evict` then drops the slot and the host copy again (the file stays), so every load
is cold and finds a free slot. The span is the whole cold path: the loader pool reads the file, parses it
(`mint.adapters.load_weights`), packs it (`packing.pack`) and wakes the step thread, which copies it into a
slot (`LoRAModel.set_slot`).

All-module adapters of ranks 8, 16 and 64 (the engine serves up to rank 64), a few distinct adapters per
rank, interleaved rank by rank. Two page-cache states, also interleaved: `cached` (the file's pages are in
the OS page cache, as for an adapter fetched or used recently: the headline metrics) and `disk` (pages
dropped with posix_fadvise(DONTNEED) first, so the read comes from the device: `*_disk` metrics).

Each sample is split with the loader pool's own count of its part (`residency.counters.load_seconds`: read
+ parse + pack, `pool_p50_ms_*`); the rest (`install_p50_ms_*`) is waking the step thread and set_slot.
A profile follows, each phase timed alone on the same cached files (median ms): read (the file's bytes),
parse, pack, and set_slot (into a slot the residency never hands out, under `engine.hold()` so no step runs
meanwhile). `floor_ms_*` is two copies of the adapter's bytes (page cache -> host tier -> slot) at the
measured copy bandwidth, which counts read + write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from bench.common import (
    MemorySource,
    copy_bandwidth_gbps,
    make_base,
    percentile,
    random_adapter,
    report,
    scratch_dir,
)
from mint.adapters import load_weights
from mint.adapters.packing import pack
from mint.adapters.spec import AdapterSpec
from services.engine.config import EngineConfig
from services.engine.engine import Engine

RANKS = (8, 16, 64)
ADAPTERS_PER_RANK = 4
POLL_S = 0.0002


def drop_page_cache(path: Path) -> None:
    """Evict the file's pages from the OS page cache (clean pages: no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_device(engine: Engine, key: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.residency.tier_of(key) != "device":
        if time.monotonic() > deadline:
            raise TimeoutError(f"adapter {key[:12]} did not reach a slot in {timeout_s}s")
        time.sleep(POLL_S)


def cold_load_s(engine: Engine, spec: AdapterSpec, *, from_disk: bool) -> tuple[float, float]:
    """One cold load (optionally with the file's pages dropped first): time prefetch until the adapter is in
    a slot, then evict it again, so every load finds it on disk only and a free slot.
    Returns (request to slot, the loader pool's part of it: read + parse + pack), in seconds."""
    residency = engine.residency
    if from_disk:
        drop_page_cache(residency.disk.path(spec.sha256))
    start = time.perf_counter()
    residency.prefetch(spec).result()  # a blocking wait while the pool loads: no polling thread competes for the GIL
    wait_device(engine, spec.key)
    elapsed = time.perf_counter() - start
    residency.evict(spec.sha256)
    return elapsed, residency.counters.load_seconds[-1]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def profile_phases(engine: Engine, spec: AdapterSpec, samples: int) -> dict[str, float]:
    """Median ms of each phase of the cold path, timed alone on the cached file."""
    path = engine.residency.disk.path(spec.sha256)
    dtype = engine.residency.dtype
    slot = engine.lora.num_slots  # every slot is empty between cold loads; the residency never sees this one used
    phases: dict[str, list[float]] = {"read": [], "parse": [], "pack": [], "set_slot": []}
    for _ in range(samples):
        seconds, _ = timed(path.read_bytes)
        phases["read"].append(seconds)
        seconds, weights = timed(lambda: load_weights(spec.config, path, dtype))
        phases["parse"].append(seconds)
        seconds, packed = timed(lambda w=weights: pack(w, engine.model_config, dtype))
        phases["pack"].append(seconds)
        with engine.hold():
            seconds, _ = timed(lambda p=packed: engine.lora.set_slot(slot, p))
            engine.lora.clear_slot(slot)
        phases["set_slot"].append(seconds)
    return {name: statistics.median(values) * 1e3 for name, values in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=0, help="cold loads per rank and page-cache state")
    args = parser.parse_args()
    preset = "tiny" if args.quick else "smollm2-shape"
    samples = args.samples or (24 if args.quick else 48)
    torch.manual_seed(0)
    with scratch_dir() as tmp:
        workdir = Path(tmp)
        config = make_base(workdir / "base", preset)
        source = MemorySource()
        specs = {
            rank: [source.add(random_adapter(config, rank=rank, seed=100 * rank + i), f"bench/r{rank}@{i}") for i in range(ADAPTERS_PER_RANK)]
            for rank in RANKS
        }
        engine = Engine(
            EngineConfig(
                model_path=str(workdir / "base"), cache_dir=str(workdir / "cache"), max_lora_rank=max(RANKS),
                device_budget_bytes=4 * 1024**3, max_slots=4, kv_cache_bytes=16 * 1024**2,
            ),
            source,
        ).start()
        try:
            for spec in (s for group in specs.values() for s in group):  # into the disk cache, then warm the path
                cold_load_s(engine, spec, from_disk=False)
            loads: dict[tuple[int, bool], list[tuple[float, float]]] = {(rank, disk): [] for rank in RANKS for disk in (False, True)}
            for i in range(samples):
                for disk in (False, True):
                    for rank in RANKS:
                        loads[(rank, disk)].append(cold_load_s(engine, specs[rank][i % ADAPTERS_PER_RANK], from_disk=disk))
            phases = {rank: profile_phases(engine, specs[rank][0], max(8, samples // 4)) for rank in RANKS}
        finally:
            engine.stop()
        bandwidth = copy_bandwidth_gbps()

    sizes = {rank: len(source.blobs[specs[rank][0].sha256]) for rank in RANKS}
    print_table(loads, phases, sizes, bandwidth)
    metrics: dict[str, float] = {}
    for suffix, disk in (("", False), ("_disk", True)):
        for rank in RANKS:
            total = [t for t, _ in loads[(rank, disk)]]
            metrics[f"load_p50_ms_r{rank}{suffix}"] = percentile(total, 0.5) * 1e3
            metrics[f"load_p99_ms_r{rank}{suffix}"] = percentile(total, 0.99) * 1e3
    for rank in RANKS:
        metrics[f"pool_p50_ms_r{rank}"] = percentile([pool for _, pool in loads[(rank, False)]], 0.5) * 1e3
        metrics[f"install_p50_ms_r{rank}"] = percentile([t - pool for t, pool in loads[(rank, False)]], 0.5) * 1e3
        metrics.update({f"{name}_ms_r{rank}": value for name, value in phases[rank].items()})
        metrics[f"floor_ms_r{rank}"] = 2 * (2 * sizes[rank]) / (bandwidth * 1e9) * 1e3
    metrics["copy_gbps"] = bandwidth
    params = {"preset": preset, "ranks": list(RANKS), "modules": "all", "samples": samples, "adapters_per_rank": ADAPTERS_PER_RANK}
    report("adapter_load", params, metrics)


def print_table(loads, phases, sizes, bandwidth) -> None:
    print(f"cold load, disk cache -> slot (copy bandwidth {bandwidth:.1f} GB/s); pool: read + parse + pack on the loader")
    print("thread; install: the rest (waking the step thread, set_slot)")
    print(f"{'rank':>5}{'MB':>8}{'pages':>8}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'pool p50':>10}{'install p50':>13}")
    for (rank, disk), samples in sorted(loads.items()):
        total = [t for t, _ in samples]
        print(
            f"{rank:>5}{sizes[rank] / 1e6:>8.1f}{'disk' if disk else 'cached':>8}{percentile(total, 0.5) * 1e3:>9.1f}"
            f"{percentile(total, 0.99) * 1e3:>9.1f}{statistics.fmean(total) * 1e3:>9.1f}"
            f"{percentile([p for _, p in samples], 0.5) * 1e3:>10.1f}{percentile([t - p for t, p in samples], 0.5) * 1e3:>13.1f}"
        )
    print(f"\nphases, each alone (median ms){'':<4}{'read':>8}{'parse':>8}{'pack':>8}{'set_slot':>10}")
    for rank, phase in phases.items():
        print(f"{'rank ' + str(rank):<34}{phase['read']:>8.1f}{phase['parse']:>8.1f}{phase['pack']:>8.1f}{phase['set_slot']:>10.1f}")
    print()


if __name__ == "__main__":
    main()
