"""Argument contracts of the public LoRA ops, shared by the torch reference and the Triton launchers.

Each check asserts shapes, dtypes, devices and contiguity once, at the public boundary, and returns
the per-slice weight views the segment primitives take, so both backends see identical operands.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from kernels.metadata import LoRAMeta, MoELoRAMeta

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # fp64 is for gradcheck, on the reference


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for weights of `dtype`."""
    # fp32 operands would otherwise go through TF32 on tensor cores and miss the fp32 tolerance.
    return "ieee" if dtype == torch.float32 else "tf32"


def intermediate_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """dtype of the shrink output: fp32 for half types and fp32 (fp32 accumulation), fp64 for fp64."""
    return torch.promote_types(x_dtype, torch.float32)


def check_shrink(x: Tensor, lora_a: Tensor, slot_ranks: Tensor) -> None:
    """x: [X, in]; lora_a: [num_slices, num_keys, r_max, in] (MoE: keys flattened)."""
    assert x.dim() == 2, f"x must be [T, in], got shape {tuple(x.shape)}"
    assert x.dtype in FLOAT_DTYPES, f"x dtype {x.dtype} is not one of {FLOAT_DTYPES}"
    assert lora_a.dtype == x.dtype, f"lora_a dtype {lora_a.dtype} must match x dtype {x.dtype}"
    assert x.is_contiguous() and lora_a.is_contiguous(), "x and lora_a must be contiguous"
    assert lora_a.dim() == 4 and lora_a.shape[3] == x.shape[1], (
        f"lora_a must be [num_slices, num_slots, r_max, in={x.shape[1]}], got {tuple(lora_a.shape)}"
    )
    _check_ranks(slot_ranks, x.device)


def check_expand(
    y: Tensor, lora_b: Tensor, slice_offsets: tuple[int, ...], scale: Tensor, out: Tensor, num_rows: int
) -> None:
    """y: [num_slices, R, r_max]; lora_b: [num_keys, total_out, r_max]; out: [R, total_out]."""
    num_slices = y.shape[0]
    assert y.dim() == 3 and y.shape[1] == num_rows, (
        f"y must be [num_slices, {num_rows}, r_max], got {tuple(y.shape)}"
    )
    assert y.dtype in FLOAT_DTYPES and out.dtype in FLOAT_DTYPES, (
        f"y {y.dtype} / out {out.dtype} must be float"
    )
    assert lora_b.dtype in FLOAT_DTYPES, f"lora_b dtype {lora_b.dtype} must be float"
    assert y.is_contiguous() and lora_b.is_contiguous() and out.is_contiguous(), (
        "y, lora_b and out must be contiguous"
    )
    assert lora_b.dim() == 3 and lora_b.shape[2] == y.shape[2], (
        f"lora_b must be [num_slots, total_out, r_max={y.shape[2]}], got {tuple(lora_b.shape)}"
    )
    total_out = lora_b.shape[1]
    assert out.shape == (num_rows, total_out), (
        f"out must be [{num_rows}, {total_out}], got {tuple(out.shape)}"
    )
    assert len(slice_offsets) == num_slices + 1, (
        f"slice_offsets needs num_slices + 1 = {num_slices + 1} entries, got {slice_offsets}"
    )
    assert slice_offsets[0] == 0 and slice_offsets[-1] == total_out, (
        f"slice_offsets must run from 0 to total_out={total_out}, got {slice_offsets}"
    )
    assert all(a <= b for a, b in itertools.pairwise(slice_offsets)), (
        f"slice_offsets must ascend: {slice_offsets}"
    )
    assert scale.dim() == 1 and scale.dtype == torch.float32, (
        f"scale must be [num_slots] fp32, got {scale.dtype}"
    )
    assert scale.device == y.device == lora_b.device == out.device, "all operands must share one device"


def _check_ranks(slot_ranks: Tensor, device: torch.device) -> None:
    assert slot_ranks.dim() == 1 and not slot_ranks.is_floating_point(), (
        f"slot_ranks must be [num_slots] int, got {slot_ranks.dtype} {tuple(slot_ranks.shape)}"
    )
    assert slot_ranks.device == device, f"slot_ranks on {slot_ranks.device}, operands on {device}"


def dense_shrink_views(x: Tensor, lora_a: Tensor, meta: LoRAMeta, slot_ranks: Tensor) -> list[Tensor]:
    """Per-slice [num_slots, r_max, in] views of lora_a, after checking the dense shrink contract."""
    check_shrink(x, lora_a, slot_ranks)
    assert x.shape[0] == meta.num_tokens, f"x has {x.shape[0]} rows, metadata has {meta.num_tokens} tokens"
    assert lora_a.shape[1] <= slot_ranks.shape[0], "slot_ranks must cover every slot of lora_a"
    return list(lora_a.unbind(0))


def dense_expand_views(
    y: Tensor, lora_b: Tensor, slice_offsets: tuple[int, ...], meta: LoRAMeta, scale: Tensor, out: Tensor
) -> list[Tensor]:
    """Per-slice [num_slots, n_s, r_max] views of lora_b, after checking the dense expand contract."""
    check_expand(y, lora_b, slice_offsets, scale, out, meta.num_tokens)
    return slice_rows(lora_b, slice_offsets)


def moe_shrink_views(
    x: Tensor, lora_a: Tensor, meta: MoELoRAMeta, slot_ranks: Tensor
) -> tuple[Tensor | None, list[Tensor]]:
    """(x_rows, per-slice [num_slots * num_experts, r_max, in] views) for the MoE shrink.

    x holds either one row per token (the layer input, shared by the token's top_k copies) or one row
    per routed copy (an expert's own input); x_rows maps each sorted row to the row of x it reads
    (None: the row itself).
    """
    rows = meta.num_tokens * meta.top_k
    assert x.dim() == 2 and x.shape[0] in (meta.num_tokens, rows), (
        f"x must have T={meta.num_tokens} or T*top_k={rows} rows, got {tuple(x.shape)}"
    )
    assert lora_a.dim() == 5 and lora_a.shape[2] == meta.num_experts, (
        f"lora_a must be [num_slices, num_slots, num_experts={meta.num_experts}, r_max, in], "
        f"got {tuple(lora_a.shape)}"
    )
    flat = lora_a.flatten(1, 2)
    check_shrink(x, flat, slot_ranks)
    x_rows = meta.sorted_source_tokens if x.shape[0] != rows else None
    return x_rows, list(flat.unbind(0))


def moe_expand_views(
    y: Tensor, lora_b: Tensor, slice_offsets: tuple[int, ...], meta: MoELoRAMeta, scale: Tensor, out: Tensor
) -> list[Tensor]:
    """Per-slice [num_slots * num_experts, n_s, r_max] views of lora_b for the MoE expand."""
    assert lora_b.dim() == 4 and lora_b.shape[1] == meta.num_experts, (
        f"lora_b must be [num_slots, num_experts={meta.num_experts}, total_out, r_max], got {tuple(lora_b.shape)}"
    )
    flat = lora_b.flatten(0, 1)
    check_expand(y, flat, slice_offsets, scale, out, meta.num_tokens * meta.top_k)
    return slice_rows(flat, slice_offsets)


def slice_rows(lora_b: Tensor, slice_offsets: tuple[int, ...]) -> list[Tensor]:
    """lora_b [num_keys, total_out, r_max] -> per-slice views [num_keys, n_s, r_max]."""
    return [lora_b[:, start:end] for start, end in itertools.pairwise(slice_offsets)]
