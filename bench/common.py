"""What several benchmarks share: random bases and adapters, percentiles, the report format."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from mint.adapters import LORA_MODULES, AdapterConfig, AdapterWeights
from mint.adapters.spec import AdapterSpec
from mint.models.config import ModelConfig
from mint.models.presets import init_base

LIGHT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")

# Benchmarks keep their files where `mint serve` keeps its data by default (.mint/ in the checkout), not in the
# system temp directory: on this machine creating a file costs ~0.8 ms of kernel time in /tmp against ~30 us
# in the checkout (same ext4 filesystem, measured), and engines and the catalog create one per adapter.
SCRATCH_ROOT = Path(__file__).resolve().parent.parent / ".mint" / "bench"


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A fresh directory under SCRATCH_ROOT, removed when the `with` block ends."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=SCRATCH_ROOT)


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


def _status_kib(field: str) -> int:
    """One memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRss:
    """The process's peak resident set size while the block runs: the kernel's high-water mark (VmHWM),
    reset to the current RSS on entry through /proc/self/clear_refs (Linux 4.0+). It starts from a trimmed
    heap (`trim_heap`), so memory that earlier work freed does not count. No sampling thread: one that woke
    every 10 ms slowed a GRPO run's sampling 3-5x (tiny preset, 2 cores), distorting what it measured. Where
    the process uses CUDA, `peak_device_bytes` is the peak of memory allocated on the current GPU."""

    def __init__(self) -> None:
        self.start_bytes = self.peak_bytes = self.peak_device_bytes = 0

    def __enter__(self) -> PeakRss:
        trim_heap()
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak RSS to the current RSS
        self.start_bytes = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        self.peak_bytes = _status_kib("VmHWM") * 1024
        if torch.cuda.is_initialized():
            self.peak_device_bytes = torch.cuda.max_memory_allocated()
