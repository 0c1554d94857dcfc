"""LoRA kernels: the CPU reference per decode layer, and the Triton ops against torch and the copy roofline.

    python -m bench.kernels_gpu            # every shape, more repetitions
    python -m bench.kernels_gpu --quick    # a few shapes, under a minute on a 2-core CPU

CPU section (always): one decode layer of SmolLM2-135M (hidden 576, intermediate 1536), 64 tokens
each using a different rank-16 adapter on all seven modules q,k,v,o,gate,up,down. It times the torch
reference (the engine's CPU path) against the same matmuls on pre-laid-out weights (the floor), a
per-token gather of the weights, a per-token loop, and the layer's base matmuls, interleaved.

GPU section (CUDA only): shrink and expand of a hidden x hidden projection in bf16, decode (one token
per adapter, and 1 adapter for all) and prefill (512-token segments), hidden sizes of SmolLM2-135M,
a 4B- and an 8B-class model, ranks 8/16/64. Each op is timed as Triton, torch reference and one dense
matmul of the same shape, with L2 flushed before every launch; bandwidth is compared with a
device-to-device copy measured in the same run. Without CUDA the GPU metrics are null.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from kernels import HAS_TRITON, LoRAMeta, lora_expand, lora_expand_ref, lora_shrink, lora_shrink_ref

CPU_MODULES = {  # SmolLM2-135M: (in, out) of each LoRA target
    "q": (576, 576),
    "k": (576, 192),
    "v": (576, 192),
    "o": (576, 576),
    "gate": (576, 1536),
    "up": (576, 1536),
    "down": (1536, 576),
}
CPU_TOKENS, CPU_RANK, CPU_LAYERS = 64, 16, 30

GPU_HIDDEN = {"smollm2-135m": 576, "4b": 2560, "8b": 4096}
GPU_RANKS = (8, 16, 64)
PREFILL_SEGMENT = 512
JUDGED_BYTES = 32 * 2**20  # smaller launches are latency-bound: reported, not judged by bandwidth


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def interleaved_cpu(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time in ms of each variant, run A B C A B C ... so drift hits all alike."""
    for fn in variants.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: median_ms(s) for name, s in samples.items()}


def cpu_section(quick: bool) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    num_slots = CPU_TOKENS + 1
    slots = torch.randperm(CPU_TOKENS, generator=gen) + 1  # every token a different adapter, any order
    ranks = torch.full((num_slots,), CPU_RANK, dtype=torch.int64)
    scale = torch.full((num_slots,), 2.0)
    lora_a = {
        m: torch.randn(1, num_slots, CPU_RANK, i, generator=gen) * 0.02 for m, (i, _) in CPU_MODULES.items()
    }
    lora_b = {
        m: torch.randn(num_slots, o, CPU_RANK, generator=gen) * 0.02 for m, (_, o) in CPU_MODULES.items()
    }
    base_w = {m: torch.randn(i, o, generator=gen) * 0.02 for m, (i, o) in CPU_MODULES.items()}
    x = {m: torch.randn(CPU_TOKENS, i, generator=gen) for m, (i, _) in CPU_MODULES.items()}
    out = {m: torch.zeros(CPU_TOKENS, o) for m, (_, o) in CPU_MODULES.items()}
    meta = LoRAMeta.build(slots, ranks)
    sorted_meta = LoRAMeta.build(slots.sort().values, ranks)

    def reference(step_meta: LoRAMeta) -> Callable[[], None]:
        def layer() -> None:
            for m in CPU_MODULES:
                y = lora_shrink_ref(x[m], lora_a[m], step_meta, ranks)
                lora_expand_ref(y, lora_b[m], (0, out[m].shape[1]), step_meta, ranks, scale, out[m])

        return layer

    def floor() -> None:
        # The same bmm calls on weights already in token order: no metadata, gather, scatter or scale.
        for m in CPU_MODULES:
            y = torch.bmm(x[m].view(CPU_TOKENS, 1, -1), lora_a[m][0, 1:].transpose(1, 2))
            out[m] += torch.bmm(y, lora_b[m][1:].transpose(1, 2)).view(CPU_TOKENS, -1)

    def gather_weights() -> None:
        for m in CPU_MODULES:
            a, b = lora_a[m][0, slots], lora_b[m][slots]
            y = torch.bmm(x[m].view(CPU_TOKENS, 1, -1), a.transpose(1, 2))
            out[m] += scale[slots].view(-1, 1) * torch.bmm(y, b.transpose(1, 2)).view(CPU_TOKENS, -1)

    def token_loop() -> None:
        for m in CPU_MODULES:
            for t, slot in enumerate(slots.tolist()):
                out[m][t] += scale[slot] * (lora_b[m][slot] @ (lora_a[m][0, slot] @ x[m][t]))

    def base() -> None:
        for m in CPU_MODULES:
            torch.mm(x[m], base_w[m])

    reps = 10 if quick else 40
    times = interleaved_cpu(
        {
            "reference": reference(meta),
            "reference_sorted": reference(sorted_meta),
            "floor": floor,
            "gather": gather_weights,
            "token_loop": token_loop,
            "base": base,
        },
        reps,
    )
    build = interleaved_cpu({"build": lambda: LoRAMeta.build(slots, ranks)}, reps * 5)["build"]

    print(
        f"CPU: one SmolLM2-135M decode layer, {CPU_TOKENS} tokens x {CPU_TOKENS} distinct rank-{CPU_RANK} adapters,"
    )
    print(f"     modules {','.join(CPU_MODULES)}, {torch.get_num_threads()} threads, median of {reps}")
    print(f"  {'variant':<44}{'ms/layer':>10}{'x floor':>10}")
    labels = {
        "reference": "torch reference (tokens in any order)",
        "reference_sorted": "torch reference (tokens in slot order)",
        "floor": "floor: bmm on pre-laid-out weights",
        "gather": "A[slot_ids] gather, then bmm",
        "token_loop": "per-token matmul loop",
        "base": "base layer matmuls (no LoRA), for scale",
    }
    for name, label in labels.items():
        print(f"  {label:<44}{times[name]:>10.3f}{times[name] / times['floor']:>10.2f}")
    print(f"  {'LoRAMeta.build (once per step)':<44}{build:>10.3f}")
    return {
        "cpu_ref_layer_ms": times["reference"],
        "cpu_ref_sorted_layer_ms": times["reference_sorted"],
        "cpu_bmm_floor_layer_ms": times["floor"],
        "cpu_gather_bmm_layer_ms": times["gather"],
        "cpu_token_loop_layer_ms": times["token_loop"],
        "cpu_base_layer_ms": times["base"],
        "cpu_meta_build_ms": build,
        "cpu_ref_step_ms": times["reference"] * CPU_LAYERS + build,
        "cpu_ref_over_floor_x": times["reference"] / times["floor"],
        "cpu_ref_speedup_vs_gather_x": times["gather"] / times["reference"],
        "cpu_ref_speedup_vs_token_loop_x": times["token_loop"] / times["reference"],
    }


def gpu_times_us(
    variants: dict[str, Callable[[], object]], reps: int, flush: torch.Tensor
) -> dict[str, float]:
    """Median device time in us of each variant, interleaved, with L2 flushed before every launch."""
    for fn in variants.values():
        fn()
    events = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {
        name: statistics.median(s.elapsed_time(e) for s, e in pairs) * 1e3 for name, pairs in events.items()
    }


def copy_gbps(flush: torch.Tensor, reps: int) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = gpu_times_us({"copy": lambda: dst.copy_(src)}, reps, flush)["copy"]
    return 2 * src.numel() / (us * 1e-6) / 1e9


def gpu_shapes(quick: bool) -> list[tuple[str, str, int, int, int, int]]:
    """(phase, model, hidden, rank, tokens, distinct adapters)."""
    if quick:
        return [
            ("decode", "8b", 4096, 16, 256, 1),
            ("decode", "8b", 4096, 16, 256, 256),
            ("decode", "smollm2-135m", 576, 16, 64, 64),
            ("prefill", "8b", 4096, 16, 4 * PREFILL_SEGMENT, 4),
        ]
    shapes = []
    for model, hidden in GPU_HIDDEN.items():
        for rank in GPU_RANKS:
            for tokens in (64, 256, 1024):
                for adapters in sorted({1, 16, tokens}):
                    shapes.append(("decode", model, hidden, rank, tokens, adapters))
            for adapters in (1, 4, 16):
                shapes.append(("prefill", model, hidden, rank, adapters * PREFILL_SEGMENT, adapters))
    return shapes


def time_shape(
    phase: str, hidden: int, rank: int, tokens: int, adapters: int, reps: int, flush: torch.Tensor
) -> dict[str, tuple[int, dict[str, float]]]:
    """{op: (bytes one launch must move, {variant: median us})} for shrink and expand of one shape."""
    dt, eb = torch.bfloat16, 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    if phase == "prefill":
        slots = torch.arange(1, adapters + 1, device="cuda").repeat_interleave(PREFILL_SEGMENT)
    else:  # decode tokens arrive in any order
        order = torch.randperm(tokens, device="cuda", generator=gen)
        slots = (torch.arange(tokens, device="cuda") % adapters + 1)[order]
    num_slots = adapters + 1
    ranks = torch.full((num_slots,), rank, dtype=torch.int32, device="cuda")
    scale = torch.ones(num_slots, device="cuda")
    lora_a = torch.randn(1, num_slots, rank, hidden, device="cuda", dtype=dt, generator=gen) * 0.02
    lora_b = torch.randn(num_slots, hidden, rank, device="cuda", dtype=dt, generator=gen) * 0.02
    x = torch.randn(tokens, hidden, device="cuda", dtype=dt, generator=gen)
    out = torch.zeros(tokens, hidden, device="cuda", dtype=dt)
    dense_a = torch.randn(hidden, rank, device="cuda", dtype=dt, generator=gen)
    dense_b = torch.randn(rank, hidden, device="cuda", dtype=dt, generator=gen)
    meta = LoRAMeta.build(slots, ranks)
    y = lora_shrink(x, lora_a, meta, ranks)
    y_dense = y[0].to(dt)
    shrink = {
        "triton": lambda: lora_shrink(x, lora_a, meta, ranks),
        "torch": lambda: lora_shrink_ref(x, lora_a, meta, ranks),
        "dense": lambda: torch.mm(x, dense_a),
    }
    expand = {
        "triton": lambda: lora_expand(y, lora_b, (0, hidden), meta, ranks, scale, out),
        "torch": lambda: lora_expand_ref(y, lora_b, (0, hidden), meta, ranks, scale, out),
        "dense": lambda: torch.mm(y_dense, dense_b),
    }
    # Each distinct adapter's weights are read once; activations once; y is fp32; out is read and written.
    shrink_bytes = adapters * rank * hidden * eb + tokens * hidden * eb + tokens * rank * 4
    expand_bytes = adapters * hidden * rank * eb + tokens * rank * 4 + 2 * tokens * hidden * eb
    return {
        "shrink": (shrink_bytes, gpu_times_us(shrink, reps, flush)),
        "expand": (expand_bytes, gpu_times_us(expand, reps, flush)),
    }


def gpu_section(quick: bool) -> tuple[dict[str, float | None], dict[str, str | None]]:
    null = {"copy_gbps": None, "decode_bw_fraction_min": None, "speedup_vs_ref_256": None}
    if not torch.cuda.is_available():
        print("\nGPU: CUDA is not available on this machine; GPU section skipped, its metrics are null.")
        return null, {"device": None}
    name = torch.cuda.get_device_name()
    if not HAS_TRITON:
        print(
            f"\nGPU: {name} present but Triton is not installed; GPU section skipped, its metrics are null."
        )
        return null, {"device": name}
    reps = 10 if quick else 30
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # larger than any L2
    copy = copy_gbps(flush, reps)
    print(f"\nGPU: {name}, bf16, device-to-device copy {copy:.0f} GB/s (read + write), median of {reps}")
    header = (
        f"  {'phase':<8}{'model':<13}{'rank':>5}{'tokens':>7}{'adapt':>6}{'op':>8}{'MB':>8}"
        f"{'triton us':>11}{'torch us':>10}{'dense us':>10}{'GB/s':>8}{'of copy':>9}"
    )
    print(header)
    metrics: dict[str, float | None] = {"copy_gbps": copy}
    judged: list[float] = []
    for phase, model, hidden, rank, tokens, adapters in gpu_shapes(quick):
        ops = time_shape(phase, hidden, rank, tokens, adapters, reps, flush)
        key = f"{phase}_{model}_r{rank}_t{tokens}_a{adapters}"
        total = {"triton": 0.0, "torch": 0.0}
        for op, (nbytes, us) in ops.items():
            gbps = nbytes / (us["triton"] * 1e-6) / 1e9
            fraction = gbps / copy
            if phase == "decode" and nbytes >= JUDGED_BYTES:
                judged.append(fraction)
            total["triton"] += us["triton"]
            total["torch"] += us["torch"]
            metrics[f"{key}_{op}_triton_us"] = us["triton"]
            metrics[f"{key}_{op}_bw_fraction"] = fraction
            print(
                f"  {phase:<8}{model:<13}{rank:>5}{tokens:>7}{adapters:>6}{op:>8}{nbytes / 2**20:>8.1f}"
                f"{us['triton']:>11.1f}{us['torch']:>10.1f}{us['dense']:>10.1f}{gbps:>8.0f}{fraction:>9.2f}"
            )
        metrics[f"{key}_speedup_vs_ref_x"] = total["torch"] / total["triton"]
        if (phase, model, rank, tokens, adapters) == ("decode", "8b", 16, 256, 256):
            metrics["speedup_vs_ref_256"] = total["torch"] / total["triton"]
    metrics["decode_bw_fraction_min"] = min(judged) if judged else None
    metrics.setdefault("speedup_vs_ref_256", None)
    return metrics, {"device": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics: dict[str, float | None] = dict(cpu_section(args.quick))
    gpu_metrics, gpu_params = gpu_section(args.quick)
    metrics.update(gpu_metrics)
    params = {
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "cpu_shape": {
            "hidden": 576,
            "intermediate": 1536,
            "tokens": CPU_TOKENS,
            "adapters": CPU_TOKENS,
            "rank": CPU_RANK,
        },
        "gpu_dtype": "bfloat16",
        **gpu_params,
    }
    print(json.dumps({"bench": "kernels_gpu", "params": params, "metrics": metrics}))


if __name__ == "__main__":
    main()
