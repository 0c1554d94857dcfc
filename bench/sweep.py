"""One engine sweeps through N distinct published revisions: each is resolved, loaded and sampled once
(16 tokens) through the gateway, with many requests in flight.

    python -m bench.sweep            # N = 100,000
    python -m bench.sweep --quick    # N = 2,000

Processes on loopback (services.local_fleet): catalog on a scratch Postgres database, a private Redis,
one engine (bounded tiers: 256 slots, ~1,000 adapters in host memory, ~4,000 on disk) and a gateway.
Adapters are rank 1 on q_proj of the tiny base, each distinct. The engine reads blobs from the catalog's
blob directory, as engines on the catalog's host (or sharing its volume) do; `--catalog-download` makes it
download each from the catalog instead. Reports adapters/s, request latency, and the engine's RSS after the
first 1,000 adapters and at the end.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import psutil

from bench.common import make_base, percentile, report, scratch_dir
from bench.fleet_setup import publish_distinct, scratch_database
from mint.sdk import SamplingParams
from services.local_fleet import LocalFleet

MODULES = ("q_proj",)
WARM = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapters", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=96)
    parser.add_argument("--catalog-download", action="store_true", help="engine downloads blobs from the catalog")
    args = parser.parse_args()
    count = args.adapters or (2000 if args.quick else 100_000)
    with scratch_dir() as tmp, scratch_database() as database:
        workdir = Path(tmp)
        config = make_base(workdir / "base", "tiny")
        engine_env = {
            "MINT_MAX_LORA_RANK": "1",
            "MINT_TORCH_THREADS": "1",  # the engine shares 2 cores with the gateway, catalog, Redis and client
            # Two loaders keep up (a rank-1 load is ~1 ms) and take the GIL from the step thread least; 10,000
            # adapters: 1 loader 158/s, 2 169-172/s, 4 155/s, 8 159/s.
            "MINT_LOAD_CONCURRENCY": "2",
            "MINT_DEVICE_BUDGET_BYTES": str(256 * 80 * 1024),
            "MINT_HOST_BUDGET_BYTES": str(1000 * 24 * 1024),
            "MINT_DISK_BUDGET_BYTES": str(4000 * 10 * 1024),
        }
        fleet = LocalFleet(workdir, database, workdir / "base", engines=1, engine_env=engine_env, shared_blobs=not args.catalog_download)
        try:
            fleet.wait_for_engines(1)
            refs = publish_distinct(fleet, config, count, rank=1, modules=MODULES, workers=8)
            metrics = run(fleet, refs, args.concurrency)
        finally:
            fleet.stop()
    params = {"adapters": count, "concurrency": args.concurrency, "rank": 1, "preset": "tiny", "new_tokens": 16,
              "blobs": "catalog" if args.catalog_download else "shared-dir"}
    report("sweep", params, metrics)


def run(fleet: LocalFleet, refs: list[str], concurrency: int) -> dict[str, float]:
    engine = psutil.Process(fleet.engines[0].proc.pid)
    params = SamplingParams(max_tokens=16, temperature=0.0, logprobs=False, ignore_eos=True)
    latencies: list[float] = []
    rss_warm = 0
    lock = threading.Lock()
    cursor = iter(refs)

    def worker() -> None:
        nonlocal rss_warm
        while True:
            with lock:
                ref = next(cursor, None)
            if ref is None:
                return
            start = time.perf_counter()
            tokens = fleet.client.create_sampling_client(ref).sample([1, 2, 3, 4], 1, params).sequences[0].tokens
            elapsed = time.perf_counter() - start
            assert len(tokens) == 16, ref
            with lock:
                latencies.append(elapsed)
                if len(latencies) == WARM:
                    rss_warm = engine.memory_info().rss
                if len(latencies) % 5000 == 0:
                    print(f"  {len(latencies):,} adapters", flush=True)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    rss_end = engine.memory_info().rss
    return {
        "adapters": float(len(latencies)),
        "adapters_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "rss_warm_mb": rss_warm / 1e6,
        "rss_end_mb": rss_end / 1e6,
        "rss_growth_ratio": rss_end / rss_warm if rss_warm else float("nan"),
    }


if __name__ == "__main__":
    main()
