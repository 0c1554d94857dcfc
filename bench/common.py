"""What several benchmarks share: random bases and adapters, percentiles, the report format."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import torch

from mint.adapters import LORA_MODULES, AdapterConfig, AdapterWeights
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from services.engine.residency import AdapterSpec

LIGHT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def make_base(path: Path, preset: str) -> ModelConfig:
    if not (path / "config.json").exists():
        init_base(path, arch="llama", preset=preset, seed=0)
    from mint.models.loading import read_config

    return read_config(path)


def random_adapter(config: ModelConfig, *, rank: int, seed: int, modules: tuple[str, ...] = LORA_MODULES) -> AdapterWeights:
    gen = torch.Generator().manual_seed(seed)
    shapes = config.module_shapes()
    tensors = {
        (layer, m): (torch.randn(rank, shapes[m][0], generator=gen) * 0.02, torch.randn(shapes[m][1], rank, generator=gen) * 0.02)
        for layer in range(config.num_layers)
        for m in modules
    }
    return AdapterWeights(config=AdapterConfig(r=rank, lora_alpha=2 * rank, target_modules=modules), tensors=tensors)


class MemorySource:
    """Adapter blobs served from memory (the engine still writes them to its disk cache)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def add(self, weights: AdapterWeights, address: str) -> AdapterSpec:
        data = weights.to_safetensors()
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        c = weights.config
        return AdapterSpec(sha256=sha, address=address, rank=c.r, alpha=c.lora_alpha, use_rslora=False, target_modules=c.target_modules)

    def fetch(self, sha256: str):
        yield self.blobs[sha256]

    def local_path(self, sha256: str):
        return None  # bytes held in memory: the engine copies and verifies them


def copy_bandwidth_gbps(size_mb: int = 256, reps: int = 5) -> float:
    """Host memory copy bandwidth counting read + write, as PERFORMANCE.md reports it."""
    src = torch.ones(size_mb * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, params: dict, metrics: dict[str, float]) -> None:
    """The human table, then the one JSON line BENCHMARKS.md asks for, last on stdout."""
    width = max(len(k) for k in metrics) + 2
    print(f"{'metric':<{width}}{'value':>14}")
    for key, value in metrics.items():
        print(f"{key:<{width}}{value:>14.4g}")
    print(json.dumps({"bench": name, "params": params, "metrics": metrics}), flush=True)


def trim_heap() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc), so RSS reflects live memory."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS keeps what the allocator caches
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRss:
    """The process's peak resident set size while the block runs, sampled by a background thread. It starts
    from a trimmed heap (`trim_heap`), so memory that earlier work freed does not count."""

    def __init__(self, interval_s: float = 0.01):
        import psutil

        self._process = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self.start_bytes = self.peak_bytes = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        trim_heap()
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
