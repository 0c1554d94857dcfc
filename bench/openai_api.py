"""Streaming chat through the OpenAI-compatible HTTP API against the same workload through MinT's gRPC API.

    python -m bench.openai_api            # 64 concurrent requests x 64 tokens, 4 rounds of each
    python -m bench.openai_api --quick    # 64 concurrent requests x 16 tokens, 2 rounds of each

`mint serve` runs in a child process (an embedded stack on a tiny random base), so neither client shares an
interpreter with the server. 16 policies each publish one random adapter; every request of a round streams
one chat answer (greedy, fixed length: ignore_eos) from revision i % 16. A round sends all its requests at
once: HTTP through `openai.AsyncOpenAI` (stream=True), gRPC through the SDK's ServiceClient channel
(SamplingService.Sample, token by token). Rounds alternate HTTP, gRPC, HTTP, ... after one warm-up round of
each (every revision resident).

    tok_s_*          completion tokens of all rounds of that door / their wall time
    ttft_p50_ms_*    median time from sending a request to its first streamed token
    http_over_grpc   tok_s_http / tok_s_grpc
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from bench.common import make_base, random_adapter, report, scratch_dir
from mint.models.config import ModelConfig
from mint.procs import ServiceProcess
from mint.proto import gateway_pb2
from mint.sdk import SamplingParams, ServiceClient
from mint.sdk.types import prompt_proto

REVISIONS = 16
CONCURRENCY = 64
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Tell me about the sea."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def http_round(ai: openai.AsyncOpenAI, refs: list[str], tokens: int) -> tuple[float, int, list[float]]:
    async def one(ref: str) -> tuple[int, float]:
        start = time.perf_counter()
        first = None
        count = 0
        stream = await ai.chat.completions.create(model=ref, messages=MESSAGES, max_tokens=tokens, temperature=0, stream=True,
                                                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content is not None and first is None:
                first = time.perf_counter() - start
            if chunk.usage:
                count = chunk.usage.completion_tokens
        return count, first if first is not None else time.perf_counter() - start

    start = time.perf_counter()
    results = await asyncio.gather(*(one(refs[i % len(refs)]) for i in range(CONCURRENCY)))
    return time.perf_counter() - start, sum(r[0] for r in results), [r[1] for r in results]


def grpc_round(client: ServiceClient, pool: ThreadPoolExecutor, refs: list[str], tokens: int) -> tuple[float, int, list[float]]:
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True).to_proto()

    def one(ref: str) -> tuple[int, float]:
        request = gateway_pb2.SampleRequest(model=ref, prompt=prompt_proto(MESSAGES), params=params)
        start = time.perf_counter()
        first = None
        count = 0
        for chunk in client._sampling.Sample(request, metadata=client.metadata, timeout=600):
            if first is None and chunk.token_ids:
                first = time.perf_counter() - start
            count += len(chunk.token_ids)
        return count, first if first is not None else time.perf_counter() - start

    start = time.perf_counter()
    results = list(pool.map(one, [refs[i % len(refs)] for i in range(CONCURRENCY)]))
    return time.perf_counter() - start, sum(r[0] for r in results), [r[1] for r in results]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=0, help="new tokens per request (default 64, quick 16)")
    parser.add_argument("--rounds", type=int, default=0, help="measured rounds of each door (default 4, quick 2)")
    args = parser.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 4)

    with scratch_dir() as tmp:
        root = Path(tmp)
        config = make_base(root / "tiny", "tiny")
        http_port = _free_port()
        server = ServiceProcess(
            ["-m", "mint.cli", "serve", "--model", str(root / "tiny"), "--data-dir", str(root / "data"), "--address", "127.0.0.1:0",
             "--http-address", f"127.0.0.1:{http_port}"],
            log_path=str(root / "serve.log"), timeout_s=300,
        )
        try:
            key = (root / "data" / "admin.key").read_text().strip()
            client = ServiceClient(server.address, key, timeout_s=600)
            refs = []
            for i in range(REVISIONS):
                client.catalog.create_policy(f"bench-{i}", "tiny")
                refs.append(client.catalog.publish(f"bench-{i}", random_adapter(ModelConfig.from_name("tiny") if config is None else config,
                                                                                rank=8, seed=i)).address)
            measured = {"http": [], "grpc": []}
            pool = ThreadPoolExecutor(max_workers=CONCURRENCY)

            async def run() -> None:
                async with openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=key, max_retries=0, timeout=600) as ai:
                    await http_round(ai, refs, tokens)  # warm-up: every revision resident, connections open
                    grpc_round(client, pool, refs, tokens)
                    for _ in range(rounds):
                        measured["http"].append(await http_round(ai, refs, tokens))
                        measured["grpc"].append(await asyncio.get_running_loop().run_in_executor(None, grpc_round, client, pool, refs, tokens))

            asyncio.run(run())
            pool.shutdown()
            client.close()
        finally:
            server.stop()

    metrics: dict[str, float] = {}
    print(f"{'door':6} {'round':>5} {'wall_s':>8} {'tokens':>7} {'tok/s':>8} {'ttft_p50_ms':>12}")
    for door, runs in measured.items():
        for i, (wall, count, ttfts) in enumerate(runs):
            print(f"{door:6} {i:5d} {wall:8.2f} {count:7d} {count / wall:8.1f} {statistics.median(ttfts) * 1000:12.1f}")
        metrics[f"tok_s_{door}"] = round(sum(r[1] for r in runs) / sum(r[0] for r in runs), 1)
        metrics[f"ttft_p50_ms_{door}"] = round(statistics.median([t for r in runs for t in r[2]]) * 1000, 1)
    metrics["http_over_grpc"] = round(metrics["tok_s_http"] / metrics["tok_s_grpc"], 3)
    report("openai_api", {"requests": CONCURRENCY, "revisions": REVISIONS, "tokens": tokens, "rounds": rounds, "quick": args.quick}, metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
