"""Triton MoE expert LoRA: shrink and expand over (slot, expert) segments of routed token copies.

Expert LoRA weights are one tensor per module, `[num_slots, num_experts, r_max, in]` per slice, so
loading an adapter's experts into a slot is one copy. Flattening (slot, expert) into one key (a view)
turns expert LoRA into dense LoRA over `T * top_k` rows keyed by `slot * num_experts + expert`: the
same shrink and expand kernels run, reading the scale and rank of `key // num_experts`.
"""

from __future__ import annotations

from torch import Tensor

from kernels.contracts import moe_expand_views, moe_shrink_views
from kernels.lora_expand import segment_expand_triton
from kernels.lora_shrink import segment_shrink_triton
from kernels.metadata import MoELoRAMeta


def lora_shrink_moe_triton(
    x: Tensor,  # [T, in] (shared by a token's top_k routes) or [T * top_k, in]
    lora_a: Tensor,  # [num_slices, num_slots, num_experts, r_max, in]
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    *,
    config: dict[str, int] | None = None,
) -> Tensor:
    """y[s, row, :r] = x[src(row)] @ lora_a[s, slot(row), expert(row), :r].T; y: [num_slices, T * top_k, r_max]."""
    x_rows, weights = moe_shrink_views(x, lora_a, meta, slot_ranks)
    return segment_shrink_triton(
        x, x_rows, weights, [0] * len(weights), meta.rows, slot_ranks, None, config=config
    )


def lora_expand_moe_triton(
    y: Tensor,  # [num_slices, T * top_k, r_max]
    lora_b: Tensor,  # [num_slots, num_experts, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T * top_k, total_out], updated in place
    *,
    config: dict[str, int] | None = None,
) -> None:
    """out[row, o[s]:o[s+1]] += scale[slot] * y[s, row, :r] @ lora_b[slot(row), expert(row), o[s]:o[s+1], :r].T"""
    weights = moe_expand_views(y, lora_b, slice_offsets, meta, scale, out)
    segment_expand_triton(y, weights, out, slice_offsets[:-1], meta.rows, slot_ranks, scale, config=config)
