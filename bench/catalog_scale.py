"""Catalog at scale: bulk import, resolve latency (store and gRPC), deep keyset pages, publish rate.

    python -m bench.catalog_scale            # 10^6 revisions over 10^4 policies
    python -m bench.catalog_scale --quick    # 10^5 revisions

Runs a catalog server process on a fresh Postgres database (MINT_TEST_DATABASE_URL), loads the catalog
through the bulk path, then measures through the SDK and through the store library.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid

import torch
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mint import auth
from mint.adapters import AdapterConfig, AdapterWeights
from mint.names import RevisionRef
from mint.procs import ServiceProcess
from mint.proto import catalog_pb2 as pb
from mint.sdk import CatalogClient
from mint.server import channel
from services.catalog.store import CatalogStore

SHAPES = {"q_proj": (256, 256), "k_proj": (256, 64), "v_proj": (256, 64), "o_proj": (256, 256)}
LAYERS = 4
REVISIONS_PER_POLICY = 100


def adapter(seed: int) -> AdapterWeights:
    gen = torch.Generator().manual_seed(seed)
    config = AdapterConfig(r=8, lora_alpha=16, target_modules=tuple(SHAPES))
    tensors = {
        (layer, m): (torch.randn(8, i, generator=gen) * 0.01, torch.randn(o, 8, generator=gen) * 0.01)
        for layer in range(LAYERS)
        for m, (i, o) in SHAPES.items()
    }
    return AdapterWeights(config=config, tensors=tensors)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--revisions", type=int, default=0)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()
    total = args.revisions or (100_000 if args.quick else 1_000_000)
    policies = total // REVISIONS_PER_POLICY

    base_url = os.environ.get("MINT_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    db_name = f"mint_bench_{uuid.uuid4().hex[:8]}"
    admin_engine = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    url = make_url(base_url).set(database=db_name).render_as_string(hide_password=False)
    admin_key = auth.generate_key().key
    workdir = tempfile.TemporaryDirectory()
    server = ServiceProcess(
        ["-m", "services.catalog"],
        {"MINT_DATABASE_URL": url, "MINT_BLOB_DIR": f"{workdir.name}/blobs", "MINT_ADMIN_KEY": admin_key, "MINT_CATALOG_ADDRESS": "127.0.0.1:0"},
        log_path=f"{workdir.name}/catalog.log",
    )
    ch = channel(server.address)
    try:
        metrics = run(CatalogClient(ch, admin_key), ch, url, total, policies, args.samples)
    finally:
        ch.close()
        server.stop()
        with admin_engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin_engine.dispose()
        workdir.cleanup()

    print(f"{'metric':<28}{'value':>14}")
    for key, value in metrics.items():
        print(f"{key:<28}{value:>14.3f}")
    print(json.dumps({"bench": "catalog_scale", "params": {"revisions": total, "policies": policies, "samples": args.samples}, "metrics": metrics}))


def run(admin: CatalogClient, ch, url: str, total: int, policies: int, samples: int) -> dict[str, float]:
    admin.create_tenant("bench")
    member = CatalogClient(ch, admin.create_api_key("bench", "bench", "member"))
    admin.register_base_model("tiny", architecture="llama", config={}, weights_sha256="0" * 64, module_shapes=SHAPES, num_layers=LAYERS)
    blobs = []
    for seed in range(16):
        a = adapter(seed)
        blobs.append(admin.upload_blob("tiny", a.config.to_json(), a.to_safetensors()).sha256)
    modules = list(SHAPES)

    def records():
        for p in range(policies):
            name = f"bench/p{p:05d}"
            for n in range(1, REVISIONS_PER_POLICY + 1):
                yield pb.RevisionRecord(
                    policy=name, base_model="tiny", number=n, parent_number=n - 1, sha256=blobs[(p + n) % 16],
                    rank=8, alpha=16, target_modules=modules, source="bench",
                )

    print(f"importing {total:,} revisions over {policies:,} policies ...", flush=True)
    start = time.perf_counter()
    result = admin.import_revisions(records())
    import_s = time.perf_counter() - start
    assert result.revisions == total, result
    # As after any bulk load: VACUUM sets the visibility map and ANALYZE the statistics now, so that the
    # autovacuum 10^6 fresh rows would trigger does not run during the latency samples below.
    with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text("VACUUM ANALYZE"))

    rng = random.Random(0)
    for p in range(0, policies, 10):
        member.set_alias(f"p{p:05d}", "prod", rng.randint(1, REVISIONS_PER_POLICY))

    def random_ref() -> str:
        p = rng.randrange(policies)
        choice = rng.random()
        if choice < 0.5:
            return f"bench/p{p:05d}@{rng.randint(1, REVISIONS_PER_POLICY)}"
        if choice < 0.8 or p % 10:
            return f"bench/p{p:05d}"
        return f"bench/p{p:05d}@prod"

    store = CatalogStore.open(url, migrate=False)
    refs = [random_ref() for _ in range(samples)]
    for ref in refs[:300]:
        store.revisions.resolve(RevisionRef.parse(ref))
    store_ms = [timed(lambda r=ref: store.revisions.resolve(RevisionRef.parse(r))) for ref in refs]
    store.close()

    for ref in refs[:300]:
        member.resolve(ref)
    grpc_ms = [timed(lambda r=ref: member.resolve(r)) for ref in refs]

    # Walk to the row 90% deep with the largest pages, then compare a page there with the first page.
    depth = int(total * 0.9)
    token, walked = "", 0
    while walked < depth:
        page = member.list_revisions_page(page_token=token, page_size=min(1000, depth - walked))
        walked += len(page.revisions)
        token = page.next_page_token
    first_ms, deep_ms = [], []
    for _ in range(60):  # interleaved A B A B
        first_ms.append(timed(lambda: member.list_revisions_page(page_size=100)))
        deep_ms.append(timed(lambda: member.list_revisions_page(page_token=token, page_size=100)))
    first_ms, deep_ms = first_ms[10:], deep_ms[10:]

    member.create_policy("publish-bench", "tiny")
    payloads = [adapter(1000 + i) for i in range(60)]
    encoded = [(a.config.to_json(), a.to_safetensors()) for a in payloads]
    start = time.perf_counter()
    for item in encoded:
        member.publish("publish-bench", item)
    publishes_per_s = len(encoded) / (time.perf_counter() - start)

    return {
        "import_s": import_s,
        "resolve_store_p50_ms": statistics.median(store_ms),
        "resolve_store_p99_ms": percentile(store_ms, 0.99),
        "resolve_grpc_p50_ms": statistics.median(grpc_ms),
        "resolve_grpc_p99_ms": percentile(grpc_ms, 0.99),
        "first_page_p50_ms": statistics.median(first_ms),
        "deep_page_p50_ms": statistics.median(deep_ms),
        "deep_page_ratio": statistics.median(deep_ms) / statistics.median(first_ms),
        "publishes_per_s": publishes_per_s,
    }


if __name__ == "__main__":
    main()
