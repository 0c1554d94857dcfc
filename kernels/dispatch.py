"""The public LoRA ops: each runs its Triton kernel on CUDA tensors when Triton is installed, else the
torch reference (the CPU production path). `backend="torch"` or `"triton"` forces one; tests force
Triton on CPU tensors under TRITON_INTERPRET=1. Triton is imported on first use, so a CPU-only
process never pays for it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal, NamedTuple

from torch import Tensor

from kernels.metadata import LoRAMeta, MoELoRAMeta
from kernels.reference import (
    lora_expand_moe_ref,
    lora_expand_ref,
    lora_shrink_moe_ref,
    lora_shrink_ref,
    segment_expand_ref,
    segment_shrink_ref,
    segment_weight_grad_ref,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None

Backend = Literal["auto", "torch", "triton"]


def resolve_backend(backend: Backend, tensor: Tensor) -> Literal["torch", "triton"]:
    if backend == "auto":
        return "triton" if tensor.is_cuda and HAS_TRITON else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return backend


class SegmentOps(NamedTuple):
    """One backend's segment primitives (see kernels/reference.py); autograd composes them."""

    shrink: Callable[..., Tensor]
    expand: Callable[..., None]
    weight_grad: Callable[..., None]


def segment_ops(backend: Literal["torch", "triton"]) -> SegmentOps:
    if backend == "triton":
        from kernels.lora_expand import segment_expand_triton
        from kernels.lora_shrink import segment_shrink_triton
        from kernels.lora_weight_grad import segment_weight_grad_triton

        return SegmentOps(segment_shrink_triton, segment_expand_triton, segment_weight_grad_triton)
    return SegmentOps(segment_shrink_ref, segment_expand_ref, segment_weight_grad_ref)


def lora_shrink(
    x: Tensor,  # [T, in]
    lora_a: Tensor,  # [num_slices, num_slots, r_max, in]
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    *,
    backend: Backend = "auto",
) -> Tensor:
    """y[s, t, :r] = x[t] @ lora_a[s, slot[t], :r].T (r = slot_ranks[slot[t]]); y: [num_slices, T, r_max] fp32."""
    if resolve_backend(backend, x) == "triton":
        from kernels.lora_shrink import lora_shrink_triton

        return lora_shrink_triton(x, lora_a, meta, slot_ranks)
    return lora_shrink_ref(x, lora_a, meta, slot_ranks)


def lora_expand(
    y: Tensor,  # [num_slices, T, r_max]
    lora_b: Tensor,  # [num_slots, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T, total_out], updated in place
    *,
    backend: Backend = "auto",
) -> None:
    """out[t, o[s]:o[s+1]] += scale[slot[t]] * y[s, t, :r] @ lora_b[slot[t], o[s]:o[s+1], :r].T; slot 0 untouched."""
    if resolve_backend(backend, out) == "triton":
        from kernels.lora_expand import lora_expand_triton

        lora_expand_triton(y, lora_b, slice_offsets, meta, slot_ranks, scale, out)
    else:
        lora_expand_ref(y, lora_b, slice_offsets, meta, slot_ranks, scale, out)


def lora_shrink_moe(
    x: Tensor,  # [T, in] (shared by a token's top_k routes) or [T * top_k, in]
    lora_a: Tensor,  # [num_slices, num_slots, num_experts, r_max, in]
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    *,
    backend: Backend = "auto",
) -> Tensor:
    """y[s, row, :r] = x[src(row)] @ lora_a[s, slot(row), expert(row), :r].T; y: [num_slices, T * top_k, r_max]."""
    if resolve_backend(backend, x) == "triton":
        from kernels.lora_moe import lora_shrink_moe_triton

        return lora_shrink_moe_triton(x, lora_a, meta, slot_ranks)
    return lora_shrink_moe_ref(x, lora_a, meta, slot_ranks)


def lora_expand_moe(
    y: Tensor,  # [num_slices, T * top_k, r_max]
    lora_b: Tensor,  # [num_slots, num_experts, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T * top_k, total_out], updated in place
    *,
    backend: Backend = "auto",
) -> None:
    """out[row, o[s]:o[s+1]] += scale[slot] * y[s, row, :r] @ lora_b[slot(row), expert(row), o[s]:o[s+1], :r].T"""
    if resolve_backend(backend, out) == "triton":
        from kernels.lora_moe import lora_expand_moe_triton

        lora_expand_moe_triton(y, lora_b, slice_offsets, meta, slot_ranks, scale, out)
    else:
        lora_expand_moe_ref(y, lora_b, slice_offsets, meta, slot_ranks, scale, out)
