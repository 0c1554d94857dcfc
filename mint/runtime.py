"""Process settings for MinT's compute processes (engine, trainer, embedded): the allocator, applied at
start-up, and which threads hold OpenMP workers."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep freed activation buffers in the heap instead of returning them to the OS.

    With glibc's defaults every large tensor is a fresh mmap, and a prefill step of a 135M model touches
    ~450 MB of new pages (~117k page faults), 30-45% on top of its matmuls. Raising the mmap and trim
    thresholds lets the next step reuse that memory. A no-op where glibc's mallopt is unavailable.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError) as err:
        log.debug("mallopt unavailable: %s", err)
        return False


# --- OpenMP workers: only the threads that run forward passes keep them --------------------------------------
#
# libgomp gives every thread that runs a parallel torch op a team of worker threads of its own, and keeps that
# team after the op. Once a process holds more OpenMP threads than cores, every team stops spinning between
# parallel regions and sleeps on a futex, so each op of the thread doing the real work pays a wake-up. Measured
# here: a [64,256]x[256,768] matmul on an engine-like step thread took 160 us alone and 250-330 us once the
# main thread (which loaded the model) held an idle team. So the thread that builds a model hands its team back,
# a compute thread (the engine's step loop, the trainer's passes) frees its team whenever it goes idle, and the
# other threads that run torch ops (gRPC handlers, adapter loaders) run them serially.

_OMP_PAUSE_SOFT = 1


def _openmp() -> ctypes.CDLL | None:
    """torch's OpenMP runtime, or None where it has none or torch is not loaded (a catalog or gateway
    process: nothing there runs parallel ops)."""
    return _find_openmp() if "torch" in sys.modules else None


@functools.cache
def _find_openmp() -> ctypes.CDLL | None:
    try:  # torch's libgomp is loaded with global symbols
        lib = ctypes.CDLL(None)
        lib.omp_set_num_threads, lib.omp_pause_resource_all  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    return lib


def release_workers() -> None:
    """Free the calling thread's idle OpenMP team (its next parallel op starts a new one)."""
    lib = _openmp()
    if lib is not None:
        lib.omp_pause_resource_all(_OMP_PAUSE_SOFT)


def serial_thread() -> None:
    """Run the calling thread's torch ops on that thread alone, holding no OpenMP workers.

    For threads that do little compute next to a process's step loop: gRPC handlers and adapter loaders.
    Per thread: other threads keep their settings.
    """
    lib = _openmp()
    if lib is None:
        return
    sys.modules["torch"].get_num_threads()  # torch sets this thread's OpenMP size on first use; let it, then override it
    lib.omp_set_num_threads(1)
    lib.omp_pause_resource_all(_OMP_PAUSE_SOFT)


class _ComputeThreads:
    """The threads of a process that run forward passes share its cores: one working alone gets all of its
    OpenMP threads, two at once (the embedded stack's engine and trainer) split them, so that they run side by
    side instead of oversubscribing the cores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Around one step or pass: takes this thread's share of the cores for it."""
        with self._lock:
            self._busy += 1
        try:
            self.rebalance()
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def rebalance(self) -> None:
        """Take this thread's current share again, inside `working`: a pass that runs for seconds calls it
        between layers, so it widens once the other compute thread goes idle (and narrows when it starts)."""
        lib = _openmp()
        if lib is None:
            return
        local = self._local
        if not hasattr(local, "full"):
            local.full = local.current = sys.modules["torch"].get_num_threads()
        with self._lock:
            share = max(1, local.full // max(1, self._busy))
        if share != local.current:
            if share < local.current:
                lib.omp_pause_resource_all(_OMP_PAUSE_SOFT)  # let the surplus workers go, not idle at a dock
            lib.omp_set_num_threads(share)
            local.current = share


compute_threads = _ComputeThreads()
