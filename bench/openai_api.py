"""Streaming chat through the OpenAI-compatible HTTP API against the same workload through MinT's gRPC API.

    python -m bench.openai_api            # 64 concurrent requests x 64 tokens, 4 rounds of each
    python -m bench.openai_api --quick    # 64 concurrent requests x 16 tokens, 2 rounds of each

`mint serve` runs in a child process (an embedded stack on a tiny random base). 16 policies each publish one
random adapter; every request of a round streams one chat answer (greedy, fixed length: ignore_eos) from
revision i % 16. A round sends all 64 requests at once: HTTP through the real `openai.AsyncOpenAI`
(stream=True), gRPC through the SDK's ServiceClient channel (SamplingService.Sample, token by token). Rounds
alternate HTTP, gRPC, HTTP, ... after one warm-up round of each (every revision resident).

Both doors' clients run in the same arrangement: --client-procs worker processes (default 4), each holding
one openai client and one gRPC channel for the whole run and sending its share of every round's requests
(an asyncio task or a thread per request). One process driving all 64 streams measures the client library:
the openai client spends about ten times the gRPC stub's CPU per token (pydantic chunks, a Python SSE
parser, httpx), and on a machine with a few cores that CPU is taken from the server. The CPU columns say
where the time went: client (all worker processes) and server (the `mint serve` process), per token.

    tok_s_*                   completion tokens of all rounds of that door / their wall time
    ttft_p50_ms_*             median time from sending a request to its first streamed token
    client_cpu_ms_per_tok_*   CPU time of the client processes per completion token
    server_cpu_ms_per_tok_*   CPU time of the server process per completion token
    http_over_grpc            tok_s_http / tok_s_grpc
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REVISIONS = 16
CONCURRENCY = 64
MESSAGES = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Tell me about the sea."}]


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process, or by process `pid`."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def http_requests(ai, refs: list[str], tokens: int) -> list[tuple[int, float]]:
    """(completion tokens, time to first token) of one streamed chat request per ref, all at once."""

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

    return list(await asyncio.gather(*(one(ref) for ref in refs)))


def grpc_requests(client, pool: ThreadPoolExecutor, refs: list[str], tokens: int) -> list[tuple[int, float]]:
    """The same through SamplingService.Sample, a thread per request."""
    from mint.proto import gateway_pb2
    from mint.sdk import SamplingParams
    from mint.sdk.types import prompt_proto

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

    return list(pool.map(one, refs))


def client_worker(conn, http_url: str, grpc_address: str, key: str, refs: list[str], tokens: int) -> None:
    """One client process: runs its share of each round the parent asks for, answers (end time, results, CPU)."""
    import openai

    from mint.sdk import ServiceClient

    loop = asyncio.new_event_loop()
    ai = openai.AsyncOpenAI(base_url=f"{http_url}/v1", api_key=key, max_retries=0, timeout=600)
    client = ServiceClient(grpc_address, key, timeout_s=600)
    pool = ThreadPoolExecutor(max_workers=len(refs))
    conn.send("ready")
    while (door := conn.recv()) is not None:
        cpu = _cpu_s()
        if door == "http":
            results = loop.run_until_complete(http_requests(ai, refs, tokens))
        else:
            results = grpc_requests(client, pool, refs, tokens)
        conn.send((time.perf_counter(), results, _cpu_s() - cpu))
    loop.run_until_complete(ai.close())
    loop.close()
    pool.shutdown()
    client.close()


class Clients:
    """`procs` client processes sharing every round's requests; a round starts when all of them are ready."""

    def __init__(self, procs: int, http_url: str, grpc_address: str, key: str, refs: list[str], tokens: int):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: gRPC state must not cross a fork
        self._conns = []
        self._procs = []
        for p in range(procs):
            mine = [refs[i % len(refs)] for i in range(p, CONCURRENCY, procs)]
            parent, child = context.Pipe()
            proc = context.Process(target=client_worker, args=(child, http_url, grpc_address, key, mine, tokens), daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            if conn.recv() != "ready":
                raise RuntimeError("a client process failed to start")

    def round(self, door: str) -> tuple[float, int, list[float], float]:
        """(wall seconds, completion tokens, times to first token, client CPU seconds) of one round."""
        start = time.perf_counter()
        for conn in self._conns:
            conn.send(door)
        answers = [conn.recv() for conn in self._conns]
        results = [r for _, rs, _ in answers for r in rs]
        return max(end for end, _, _ in answers) - start, sum(r[0] for r in results), [r[1] for r in results], sum(a[2] for a in answers)

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tokens", type=int, default=0, help="new tokens per request (default 64, quick 16)")
    parser.add_argument("--rounds", type=int, default=0, help="measured rounds of each door (default 4, quick 2)")
    parser.add_argument("--client-procs", type=int, default=4, help="client processes sharing each round's 64 requests")
    args = parser.parse_args(argv)
    tokens = args.tokens or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 4)

    from bench.common import make_base, random_adapter, report, scratch_dir
    from mint.models.config import ModelConfig
    from mint.procs import ServiceProcess
    from mint.sdk import ServiceClient

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
            client.close()
            clients = Clients(args.client_procs, f"http://127.0.0.1:{http_port}", server.address, key, refs, tokens)
            try:
                clients.round("http")  # warm-up: every revision resident, connections open
                clients.round("grpc")
                measured: dict[str, list] = {"http": [], "grpc": []}
                for _ in range(rounds):
                    for door in ("http", "grpc"):
                        server_cpu = _cpu_s(server.proc.pid)
                        wall, count, ttfts, client_cpu = clients.round(door)
                        measured[door].append((wall, count, ttfts, client_cpu, _cpu_s(server.proc.pid) - server_cpu))
            finally:
                clients.close()
        finally:
            server.stop()

    metrics: dict[str, float] = {}
    print(f"{'door':6} {'round':>5} {'wall_s':>8} {'tokens':>7} {'tok/s':>8} {'ttft_p50_ms':>12} {'client_cpu_ms/tok':>18} {'server_cpu_ms/tok':>18}")
    for door, runs in measured.items():
        for i, (wall, count, ttfts, client_cpu, server_cpu) in enumerate(runs):
            print(f"{door:6} {i:5d} {wall:8.2f} {count:7d} {count / wall:8.1f} {statistics.median(ttfts) * 1000:12.1f}"
                  f" {client_cpu * 1000 / count:18.3f} {server_cpu * 1000 / count:18.3f}")
        tokens_done = sum(r[1] for r in runs)
        metrics[f"tok_s_{door}"] = round(tokens_done / sum(r[0] for r in runs), 1)
        metrics[f"ttft_p50_ms_{door}"] = round(statistics.median([t for r in runs for t in r[2]]) * 1000, 1)
        metrics[f"client_cpu_ms_per_tok_{door}"] = round(sum(r[3] for r in runs) * 1000 / tokens_done, 3)
        metrics[f"server_cpu_ms_per_tok_{door}"] = round(sum(r[4] for r in runs) * 1000 / tokens_done, 3)
    metrics["http_over_grpc"] = round(metrics["tok_s_http"] / metrics["tok_s_grpc"], 3)
    report("openai_api", {"requests": CONCURRENCY, "revisions": REVISIONS, "tokens": tokens, "rounds": rounds, "quick": args.quick,
                          "client_procs": args.client_procs}, metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
