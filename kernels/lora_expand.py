"""Triton LoRA expand: add each token's scaled rank-r update to its output columns, all slices at once.

Grid: (active segment, slice x column block, token tile). Slices of different widths (GQA-sized k/v
next to q) share one launch: column blocks past a narrow slice's width exit at once. The reduction runs
over the slot's own rank only, so padding beyond it is never read. The same kernel computes the
input-gradient of lora_shrink, where every slice adds into the same columns (`sum_slices`): a
program then loops over the slices itself, so no two programs write one element.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import triton
import triton.language as tl
from torch import Tensor

from kernels.contracts import TRITON_DTYPES, dense_expand_views, dot_precision
from kernels.launch_config import launch_config
from kernels.metadata import LoRAMeta
from kernels.slice_table import slice_table, view_offsets


@triton.jit
def _expand_kernel(
    y_ptr,  # [num_slices, T, r_max]
    w_ptr,  # slice 0 of [num_keys, N, r_max]; other slices at slice_ptr offsets
    out_ptr,  # [T, W]
    rows_ptr,  # [T_lora] row of y and out of each sorted token
    seg_keys_ptr,  # [S] active keys
    seg_starts_ptr,  # [S]
    seg_counts_ptr,  # [S]
    slot_ranks_ptr,  # [num_slots]
    scale_ptr,  # [num_slots] fp32, read when HAS_SCALE
    slice_ptr,  # [num_slices, 3]: weight offset, first out column, N
    keys_per_slot,
    r_max,
    num_n_blocks,
    stride_ys,
    stride_ym,
    stride_yr,
    stride_wkey,
    stride_wn,
    stride_wr,
    stride_om,
    stride_on,
    HAS_SCALE: tl.constexpr,
    SUM_SLICES: tl.constexpr,
    NUM_SLICES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    seg = tl.program_id(0)
    if SUM_SLICES:
        first_slice = 0
        end_slice = NUM_SLICES
        n_start = tl.program_id(1) * BLOCK_N
    else:
        first_slice = tl.program_id(1) // num_n_blocks
        end_slice = first_slice + 1
        n_start = (tl.program_id(1) % num_n_blocks) * BLOCK_N
    m_start = tl.program_id(2) * BLOCK_M
    count = tl.load(seg_counts_ptr + seg)
    if m_start >= count:
        return
    n_len = tl.load(slice_ptr + first_slice * 3 + 2)
    if n_start >= n_len:
        return
    key = tl.load(seg_keys_ptr + seg)
    slot = key // keys_per_slot
    rank = tl.minimum(tl.load(slot_ranks_ptr + slot), r_max)
    if rank == 0:
        # A cleared slot leaves its tokens' outputs untouched, bit for bit.
        return
    start = tl.load(seg_starts_ptr + seg)
    out_col = tl.load(slice_ptr + first_slice * 3 + 1)

    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    offs_n = n_start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_len
    offs_r = tl.arange(0, BLOCK_R)
    rows = tl.load(rows_ptr + start + offs_m, mask=mask_m, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for slice_id in range(first_slice, end_slice):
        w_offset = tl.load(slice_ptr + slice_id * 3)
        y_tile = y_ptr + slice_id * stride_ys + rows[:, None] * stride_ym + offs_r[None, :] * stride_yr
        w_tile = (
            w_ptr + w_offset + key * stride_wkey + offs_n[:, None] * stride_wn + offs_r[None, :] * stride_wr
        )
        for r_start in range(0, rank, BLOCK_R):
            mask_r = (r_start + offs_r) < rank
            w = tl.load(w_tile, mask=mask_n[:, None] & mask_r[None, :], other=0.0)
            y = tl.load(y_tile, mask=mask_m[:, None] & mask_r[None, :], other=0.0)
            acc += tl.dot(y.to(w.dtype), tl.trans(w), input_precision=DOT_PRECISION)
            y_tile += BLOCK_R * stride_yr
            w_tile += BLOCK_R * stride_wr
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + slot)
    out_tile = out_ptr + rows[:, None] * stride_om + (out_col + offs_n)[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    base = tl.load(out_tile, mask=mask, other=0.0)
    tl.store(out_tile, (base.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=mask)


def segment_expand_triton(
    y: Tensor,  # [S, T, r_max]
    weights: Sequence[Tensor],  # per slice [num_keys, N_s, r_max], views of one tensor
    out: Tensor,  # [T, W], updated in place
    out_cols: Sequence[int],  # per slice, first column of out (N_s columns are written)
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
    *,
    config: dict[str, int] | None = None,
) -> None:
    """out[t, col_s:col_s+N_s] += scale[slot(t)] * y[s, t, :r] @ weights[s][key(t), :, :r].T

    Slices either write disjoint column windows or all the same window (then their sum is added).
    """
    assert y.dtype in TRITON_DTYPES and out.dtype in TRITON_DTYPES and weights[0].dtype in TRITON_DTYPES, (
        f"Triton path takes {TRITON_DTYPES}, got y {y.dtype}, weights {weights[0].dtype}, out {out.dtype}"
    )
    if meta.no_lora:
        return
    widths = [w.shape[1] for w in weights]
    windows = list(zip(out_cols, widths, strict=True))
    sum_slices = len(weights) > 1 and len(set(windows)) == 1
    if not sum_slices:
        spans = sorted(windows)
        assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans)), (
            f"slice windows overlap: {windows}"
        )
    cfg = config or launch_config("expand", out.device, meta.max_slot_tokens)
    offsets = view_offsets(weights)
    table = slice_table(out.device, [(off, col, n) for off, (col, n) in zip(offsets, windows, strict=True)])
    num_n_blocks = triton.cdiv(max(widths), cfg["BLOCK_N"])
    grid = (
        meta.num_active,
        num_n_blocks if sum_slices else len(weights) * num_n_blocks,
        triton.cdiv(meta.max_slot_tokens, cfg["BLOCK_M"]),
    )
    w = weights[0]
    _expand_kernel[grid](
        y, w, out,
        meta.sorted_token_ids,
        meta.active_slots, meta.slot_starts, meta.slot_counts,
        slot_ranks, scale,
        table,
        meta.keys_per_slot, y.shape[2], num_n_blocks,
        y.stride(0), y.stride(1), y.stride(2),
        w.stride(0), w.stride(1), w.stride(2),
        out.stride(0), out.stride(1),
        HAS_SCALE=scale is not None,
        SUM_SLICES=sum_slices,
        NUM_SLICES=len(weights),
        DOT_PRECISION=dot_precision(w.dtype),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_R=cfg["BLOCK_R"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


def lora_expand_triton(
    y: Tensor,  # [num_slices, T, r_max]
    lora_b: Tensor,  # [num_slots, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T, total_out], updated in place
    *,
    config: dict[str, int] | None = None,
) -> None:
    """out[t, o[s]:o[s+1]] += scale[slot[t]] * y[s, t, :r] @ lora_b[slot[t], o[s]:o[s+1], :r].T; slot 0 untouched."""
    weights = dense_expand_views(y, lora_b, slice_offsets, meta, scale, out)
    segment_expand_triton(y, weights, out, slice_offsets[:-1], meta, slot_ranks, scale, config=config)
