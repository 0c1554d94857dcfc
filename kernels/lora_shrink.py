"""Triton LoRA shrink: project each token onto its adapter's rank-r subspace, all slices in one launch.

Grid: (active segment, slice x rank block, token tile). A program loads its segment's weight tile once
per K step and reuses it for every token of the tile; rank blocks beyond the slot's rank exit at once,
so a rank-8 adapter in a rank-64 slot tensor costs rank-8 work (rounded up to BLOCK_R). The same kernel
computes the input-gradient of lora_expand (per-slice column windows of the input, times scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.contracts import TRITON_DTYPES, dense_shrink_views, dot_precision, intermediate_dtype
from kernels.launch_config import launch_config
from kernels.metadata import LoRAMeta
from kernels.slice_table import slice_table, view_offsets


@triton.jit
def _shrink_kernel(
    x_ptr,  # [X, in_total]
    w_ptr,  # slice 0 of [num_keys, r_max, K]; other slices at slice_ptr offsets
    y_ptr,  # [num_slices, T, r_max]
    x_rows_ptr,  # [T_lora] row of x read by each sorted token
    y_rows_ptr,  # [T_lora] row of y written by each sorted token
    seg_keys_ptr,  # [S] active keys
    seg_starts_ptr,  # [S]
    seg_counts_ptr,  # [S]
    slot_ranks_ptr,  # [num_slots]
    scale_ptr,  # [num_slots] fp32, read when HAS_SCALE
    slice_ptr,  # [num_slices, 3]: weight offset, first x column, K
    keys_per_slot,
    r_max,
    num_r_blocks,
    stride_xm,
    stride_xk,
    stride_wkey,
    stride_wr,
    stride_wk,
    stride_ys,
    stride_ym,
    stride_yr,
    HAS_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    seg = tl.program_id(0)
    slice_id = tl.program_id(1) // num_r_blocks
    r_start = (tl.program_id(1) % num_r_blocks) * BLOCK_R
    m_start = tl.program_id(2) * BLOCK_M
    count = tl.load(seg_counts_ptr + seg)
    if m_start >= count:
        return
    key = tl.load(seg_keys_ptr + seg)
    slot = key // keys_per_slot
    rank = tl.minimum(tl.load(slot_ranks_ptr + slot), r_max)
    if r_start >= rank:
        return
    start = tl.load(seg_starts_ptr + seg)
    w_offset = tl.load(slice_ptr + slice_id * 3)
    x_col = tl.load(slice_ptr + slice_id * 3 + 1)
    k_len = tl.load(slice_ptr + slice_id * 3 + 2)

    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    offs_r = r_start + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = tl.load(x_rows_ptr + start + offs_m, mask=mask_m, other=0)
    x_tile = x_ptr + x_rows[:, None] * stride_xm + (x_col + offs_k)[None, :] * stride_xk
    w_tile = w_ptr + w_offset + key * stride_wkey + offs_r[:, None] * stride_wr + offs_k[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k_start in range(0, k_len, BLOCK_K):
        mask_k = (k_start + offs_k) < k_len
        w = tl.load(w_tile, mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        x = tl.load(x_tile, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc += tl.dot(x.to(w.dtype), tl.trans(w), input_precision=DOT_PRECISION)
        x_tile += BLOCK_K * stride_xk
        w_tile += BLOCK_K * stride_wk
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + slot)
    y_rows = tl.load(y_rows_ptr + start + offs_m, mask=mask_m, other=0)
    y_tile = y_ptr + slice_id * stride_ys + y_rows[:, None] * stride_ym + offs_r[None, :] * stride_yr
    tl.store(y_tile, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_r[None, :])


def segment_shrink_triton(
    x: Tensor,  # [X, in_total]
    x_rows: Tensor | None,  # [T_lora] row of x read by each sorted token; None: the token's own row
    weights: Sequence[Tensor],  # per slice [num_keys, r_max, K_s], views of one tensor
    x_cols: Sequence[int],  # per slice, first column of x (K_s columns are read)
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
    *,
    config: dict[str, int] | None = None,
) -> Tensor:
    """y[s, t, j] = scale[slot(t)] * x[x_row(t), x_col_s:x_col_s+K_s] @ weights[s][key(t), j]; y: [S, T, r_max]."""
    assert x.dtype in TRITON_DTYPES and weights[0].dtype in TRITON_DTYPES, (
        f"Triton path takes {TRITON_DTYPES}, got x {x.dtype}, weights {weights[0].dtype}"
    )
    num_slices, r_max = len(weights), weights[0].shape[1]
    y = torch.zeros(num_slices, meta.num_tokens, r_max, dtype=intermediate_dtype(x.dtype), device=x.device)
    if meta.no_lora:
        return y
    cfg = config or launch_config("shrink", x.device, meta.max_slot_tokens)
    offsets = view_offsets(weights)
    table = slice_table(
        x.device, [(off, col, w.shape[2]) for off, col, w in zip(offsets, x_cols, weights, strict=True)]
    )
    num_r_blocks = triton.cdiv(r_max, cfg["BLOCK_R"])
    grid = (meta.num_active, num_slices * num_r_blocks, triton.cdiv(meta.max_slot_tokens, cfg["BLOCK_M"]))
    w = weights[0]
    _shrink_kernel[grid](
        x, w, y,
        meta.sorted_token_ids if x_rows is None else x_rows, meta.sorted_token_ids,
        meta.active_slots, meta.slot_starts, meta.slot_counts,
        slot_ranks, scale,
        table,
        meta.keys_per_slot, r_max, num_r_blocks,
        x.stride(0), x.stride(1),
        w.stride(0), w.stride(1), w.stride(2),
        y.stride(0), y.stride(1), y.stride(2),
        HAS_SCALE=scale is not None,
        DOT_PRECISION=dot_precision(w.dtype),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_R=cfg["BLOCK_R"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y


def lora_shrink_triton(
    x: Tensor,  # [T, in]
    lora_a: Tensor,  # [num_slices, num_slots, r_max, in]
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    *,
    config: dict[str, int] | None = None,
) -> Tensor:
    """y[s, t, :r] = x[t] @ lora_a[s, slot[t], :r].T with r = slot_ranks[slot[t]]; y = 0 elsewhere.

    Returns y: [num_slices, T, r_max] fp32 (fp32 accumulation whatever the input dtype).
    """
    weights = dense_shrink_views(x, lora_a, meta, slot_ranks)
    return segment_shrink_triton(x, None, weights, [0] * len(weights), meta, slot_ranks, None, config=config)
