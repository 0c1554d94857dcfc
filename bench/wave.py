"""A 1,000-adapter wave over 2 engines: time until every adapter is resident, how evenly the bytes spread,
and how many requests were served while the wave loaded.

    python -m bench.wave            # 1,000 adapters (rank 8, all modules, tiny base)
    python -m bench.wave --quick    # 200 adapters

Processes on loopback (services.local_fleet): catalog on a scratch Postgres database, a private Redis,
two engines and a gateway. A client keeps sampling random adapters of the wave while it loads.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path

from bench.common import make_base, report, scratch_dir
from bench.fleet_setup import publish_distinct, scratch_database
from mint.adapters import LORA_MODULES
from mint.sdk import SamplingParams
from services.local_fleet import LocalFleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--adapters", type=int, default=0)
    args = parser.parse_args()
    count = args.adapters or (200 if args.quick else 1000)
    with scratch_dir() as tmp, scratch_database() as database:
        workdir = Path(tmp)
        config = make_base(workdir / "base", "tiny")
        fleet = LocalFleet(workdir, database, workdir / "base", engines=2, engine_env={"MINT_HOST_BUDGET_BYTES": str(2 * 1024**3), "MINT_TORCH_THREADS": "1"})
        try:
            fleet.wait_for_engines(2)
            refs = publish_distinct(fleet, config, count, rank=8, modules=tuple(LORA_MODULES))
            metrics = run(fleet, refs)
        finally:
            fleet.stop()
    report("wave", {"adapters": count, "engines": 2, "rank": 8, "preset": "tiny"}, metrics)


def run(fleet: LocalFleet, refs: list[str]) -> dict[str, float]:
    served = 0
    stop = threading.Event()
    params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=False, ignore_eos=True)

    def traffic(seed: int) -> None:
        nonlocal served
        rng = random.Random(seed)
        while not stop.is_set():
            fleet.client.create_sampling_client(rng.choice(refs)).sample([1, 2, 3], 1, params)
            if not stop.is_set():
                served += 1

    start = time.perf_counter()
    wave = fleet.client.activate_wave(refs, "bench")
    clients = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
    for client in clients:
        client.start()
    while not wave.ready:
        time.sleep(0.05)
        wave = fleet.client.get_wave(wave.wave_id)
    ready_s = time.perf_counter() - start
    stop.set()
    for client in clients:
        client.join()
    shares = {share.engine_id: share.bytes for share in wave.engines}
    for engine_id, size in sorted(shares.items()):
        print(f"  {engine_id}: {size / 1e6:.1f} MB")
    return {
        "ready_s": ready_s,
        "bytes_balance_ratio": max(shares.values()) / max(1, min(shares.values())),
        "served_during_wave": float(served),
        "resident": float(wave.resident),
        "failed": float(wave.failed),
    }


if __name__ == "__main__":
    main()
