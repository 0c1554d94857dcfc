"""Triton LoRA weight gradients: one reduction over each segment's tokens per (slot, slice) weight.

  grad_A[s, key, j, k]   = sum_{t in key} dy[s, t, j] * x[t, k]
  grad_B[key, o_s + n, j] = scale[slot] * sum_{t in key} dout[t, o_s + n] * y[s, t, j]

are both g[key, j, k] = scale * u[s, tokens, j]^T @ v[tokens, col_s + k]: the rank side `u` and the
wide side `v`. Grid: (active segment, slice x rank block, column block of the wide side); a program
walks its segment's tokens in BLOCK_M steps and writes its tile once, so no atomics are needed and
the result is deterministic. Entries of inactive slots and beyond a slot's rank are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import triton
import triton.language as tl
from torch import Tensor

from kernels.contracts import TRITON_DTYPES
from kernels.launch_config import launch_config
from kernels.metadata import LoRAMeta
from kernels.slice_table import slice_table, view_offsets


@triton.jit
def _weight_grad_kernel(
    u_ptr,  # [num_slices, T, r_max], rank side
    v_ptr,  # [V, W], wide side
    g_ptr,  # slice 0 of [num_keys, r_max, K]; other slices at slice_ptr offsets
    rows_ptr,  # [T_lora] row of u of each sorted token
    v_rows_ptr,  # [T_lora] row of v of each sorted token
    seg_keys_ptr,  # [S] active keys
    seg_starts_ptr,  # [S]
    seg_counts_ptr,  # [S]
    slot_ranks_ptr,  # [num_slots]
    scale_ptr,  # [num_slots] fp32, read when HAS_SCALE
    slice_ptr,  # [num_slices, 3]: gradient offset, first v column, K
    keys_per_slot,
    r_max,
    num_r_blocks,
    stride_us,
    stride_um,
    stride_ur,
    stride_vm,
    stride_vk,
    stride_gkey,
    stride_gr,
    stride_gk,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    seg = tl.program_id(0)
    slice_id = tl.program_id(1) // num_r_blocks
    r_start = (tl.program_id(1) % num_r_blocks) * BLOCK_R
    k_start = tl.program_id(2) * BLOCK_K
    k_len = tl.load(slice_ptr + slice_id * 3 + 2)
    if k_start >= k_len:
        return
    key = tl.load(seg_keys_ptr + seg)
    slot = key // keys_per_slot
    rank = tl.minimum(tl.load(slot_ranks_ptr + slot), r_max)
    if r_start >= rank:
        return
    start = tl.load(seg_starts_ptr + seg)
    count = tl.load(seg_counts_ptr + seg)
    v_col = tl.load(slice_ptr + slice_id * 3 + 1)

    offs_r = r_start + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    offs_k = k_start + tl.arange(0, BLOCK_K)
    mask_k = offs_k < k_len
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for m_start in range(0, count, BLOCK_M):
        mask_m = (m_start + offs_m) < count
        rows = tl.load(rows_ptr + start + m_start + offs_m, mask=mask_m, other=0)
        v_rows = tl.load(v_rows_ptr + start + m_start + offs_m, mask=mask_m, other=0)
        u = tl.load(
            u_ptr + slice_id * stride_us + rows[:, None] * stride_um + offs_r[None, :] * stride_ur,
            mask=mask_m[:, None] & mask_r[None, :],
            other=0.0,
        )
        v = tl.load(
            v_ptr + v_rows[:, None] * stride_vm + (v_col + offs_k)[None, :] * stride_vk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        # Weight gradients stay in fp32 end to end: they feed an optimizer, not the next layer.
        acc += tl.dot(tl.trans(u.to(tl.float32)), v.to(tl.float32), input_precision="ieee")
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + slot)
    g_offset = tl.load(slice_ptr + slice_id * 3)
    g_tile = g_ptr + g_offset + key * stride_gkey + offs_r[:, None] * stride_gr + offs_k[None, :] * stride_gk
    tl.store(g_tile, acc.to(g_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_k[None, :])


def segment_weight_grad_triton(
    u: Tensor,  # [S, T, r_max], the rank-side operand
    v: Tensor,  # [V, W], the wide operand
    v_rows: Tensor | None,  # [T_lora] row of v read by each sorted token; None: the token's own row
    v_cols: Sequence[int],  # per slice, first column of v (K_s columns are read)
    grads: Sequence[Tensor],  # per slice [num_keys, r_max, K_s], views of one tensor, written
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
    *,
    config: dict[str, int] | None = None,
) -> None:
    """grads[s][key, :r] = scale[slot] * u[s, tokens(key), :r].T @ v[v_rows(tokens(key)), v_col_s:v_col_s+K_s]"""
    assert u.dtype in TRITON_DTYPES and v.dtype in TRITON_DTYPES and grads[0].dtype in TRITON_DTYPES, (
        f"Triton path takes {TRITON_DTYPES}, got u {u.dtype}, v {v.dtype}, grads {grads[0].dtype}"
    )
    if meta.no_lora:
        return
    cfg = config or launch_config("weight_grad", v.device, meta.max_slot_tokens)
    offsets = view_offsets(grads)
    table = slice_table(
        v.device, [(off, col, g.shape[2]) for off, col, g in zip(offsets, v_cols, grads, strict=True)]
    )
    r_max = u.shape[2]
    num_r_blocks = triton.cdiv(r_max, cfg["BLOCK_R"])
    grid = (
        meta.num_active,
        len(grads) * num_r_blocks,
        triton.cdiv(max(g.shape[2] for g in grads), cfg["BLOCK_K"]),
    )
    g = grads[0]
    _weight_grad_kernel[grid](
        u, v, g,
        meta.sorted_token_ids, meta.sorted_token_ids if v_rows is None else v_rows,
        meta.active_slots, meta.slot_starts, meta.slot_counts,
        slot_ranks, scale,
        table,
        meta.keys_per_slot, r_max, num_r_blocks,
        u.stride(0), u.stride(1), u.stride(2),
        v.stride(0), v.stride(1),
        g.stride(0), g.stride(1), g.stride(2),
        HAS_SCALE=scale is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_R=cfg["BLOCK_R"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
