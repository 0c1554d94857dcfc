"""Pure-torch LoRA ops: the CPU production path and the oracle the Triton kernels are tested against.

The algorithm is built for a 2-core CPU serving many distinct adapters. Tokens (cheap activations) are
gathered into slot order. Each `SegmentRun` of `LoRAMeta` (slots adjacent in sorted order holding the same
number of tokens) is one `torch.bmm`, cut to the largest rank in the run, over a view of the slot tensor
when its slots are consecutive. Over scattered slots (a decode batch in a large slot pool) the run gathers
its adapters' weights when each is at most GATHER_MAX_KEY_BYTES, and otherwise runs piece by consecutive
piece: copying big weights costs more than the matmuls it saves (measured in kernels/README.md), while one
op per small adapter costs more than copying it (a tiny-preset decode step of 96 rank-1 adapters in every
other slot of 256: 34.7 ms with one op per adapter, 16.5 ms gathered, 15.8 ms in consecutive slots).

Ranks: a slot's weights beyond its rank must be zero (the slot manager zero-fills when it loads a
lower-rank adapter): a run that mixes ranks computes up to its largest rank, reading those zeros.

Three segment primitives carry every op, forward and backward:
  shrink:      y[s, t, j]      = scale[slot] * sum_k x[x_row(t), x_col_s + k] * w_s[key(t), j, k]
  expand:      out[t, col_s+n] += scale[slot] * sum_j y[s, t, j] * w_s[key(t), n, j]
  weight_grad: g_s[key, j, k]  = scale[slot] * sum_{t in key} u[s, t, j] * v[v_row(t), v_col_s + k]
with j < rank(slot). The public ops (lora_shrink_ref, ...) check their contract and call them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from kernels.contracts import (
    dense_expand_views,
    dense_shrink_views,
    intermediate_dtype,
    moe_expand_views,
    moe_shrink_views,
)
from kernels.metadata import LoRAMeta, MoELoRAMeta, SegmentRun


def _run_matmul(a: Tensor, b: Tensor, run: SegmentRun) -> Tensor:
    """a [n*k, p] @ b [n, p, q] per key -> [n*k, q]; one key degrades to a plain mm."""
    if run.num_keys == 1:
        return torch.mm(a, b[0])
    return torch.bmm(a.view(run.num_keys, run.tokens_per_key, a.shape[1]), b).view(-1, b.shape[2])


def _run_matmul_into(c: Tensor, a: Tensor, b: Tensor, run: SegmentRun) -> None:
    """c [n*k, q] += a [n*k, p] @ b [n, p, q] per key, in place."""
    if run.num_keys == 1:
        c.addmm_(a, b[0])
    else:
        c.view(run.num_keys, run.tokens_per_key, c.shape[1]).baddbmm_(a.view(run.num_keys, run.tokens_per_key, a.shape[1]), b)


# A run over scattered slots reads its adapters' weights gathered into one tensor when each adapter's share is
# at most this many bytes, else in place, piece by consecutive piece. Shrink + expand of 64 decode tokens in
# every other slot (SmolLM2 widths, on a step thread), gathered vs in pieces: 36 KB per adapter (rank 16,
# 576 wide) 200 vs 1734 us; 144 KB (rank 64) 994 vs 2897 us; 288 KB (rank 128) 2.9 vs 5.9 ms; 384 KB 3.3 vs
# 3.8 ms; 768 KB (rank 128, 1536 wide) 40 vs 12 ms, where the gathered copy no longer stays in cache.
GATHER_MAX_KEY_BYTES = 256 * 1024


def _runs_with_ranks(meta: LoRAMeta, slot_ranks: Tensor, r_max: int, key_bytes_per_rank: int | None = None):
    """(run, rank to compute up to); runs of cleared (rank-0) slots do no work and touch nothing.

    A run whose keys are scattered stays whole (its weights to be gathered) when a key's weights up to that
    rank take at most GATHER_MAX_KEY_BYTES (`key_bytes_per_rank` per rank), else it comes as its consecutive
    pieces. None: always whole (the caller reads no weights per key).
    """
    for run, rank in zip(meta.runs, meta.run_ranks(slot_ranks), strict=True):
        rank = min(rank, r_max)
        if rank <= 0:
            continue
        if run.keys and key_bytes_per_rank is not None and rank * key_bytes_per_rank > GATHER_MAX_KEY_BYTES:
            for piece in run.pieces():
                yield piece, rank
        else:
            yield run, rank


def _run_weights(w: Tensor, meta: LoRAMeta, run: SegmentRun) -> Tensor:
    """The run's rows of a per-key weight tensor w [num_keys, ...]: a view, or a gather for scattered keys."""
    if run.keys:
        return w.index_select(0, meta.key_index(run))
    return w[run.first_key : run.first_key + run.num_keys]


def _row_scale(meta: LoRAMeta, scale: Tensor) -> Tensor:
    """[T_lora, 1] scale of each sorted token's slot."""
    return scale.index_select(0, meta.sorted_slots).unsqueeze(1)


def segment_shrink_ref(
    x: Tensor,  # [X, in_total]
    x_rows: Tensor | None,  # [T_lora] row of x read by each sorted token; None: the token's own row
    weights: Sequence[Tensor],  # per slice [num_keys, r_max, K_s]
    x_cols: Sequence[int],  # per slice, first column of x (K_s columns are read)
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
) -> Tensor:
    """y[s, t, j] = scale[slot(t)] * x[x_row(t), x_col_s:x_col_s+K_s] @ weights[s][key(t), j]; y: [S, T, r_max]."""
    r_max = weights[0].shape[1]
    y = torch.zeros(len(weights), meta.num_tokens, r_max, dtype=intermediate_dtype(x.dtype), device=x.device)
    if meta.no_lora:
        return y
    in_place = x_rows is None and meta.in_slot_order
    xs = x if in_place else x.index_select(0, meta.sorted_token_ids if x_rows is None else x_rows)
    row_scale = None if scale is None else _row_scale(meta, scale)
    for s, (w, col) in enumerate(zip(weights, x_cols, strict=True)):
        cols = slice(col, col + w.shape[2])
        for run, rank in _runs_with_ranks(meta, slot_ranks, r_max, w.shape[2] * w.element_size()):
            rows = slice(run.token_start, run.token_end)
            part = _run_matmul(xs[rows, cols], _run_weights(w[:, :rank], meta, run).transpose(1, 2), run)
            if row_scale is not None:
                part = part * row_scale[rows]
            if in_place:
                y[s, rows, :rank] = part
            else:
                y[s, :, :rank].index_copy_(0, meta.sorted_token_ids[rows], part.to(y.dtype))
    return y


def segment_expand_ref(
    y: Tensor,  # [S, T, r_max]
    weights: Sequence[Tensor],  # per slice [num_keys, N_s, r_max]
    out: Tensor,  # [T, W], updated in place
    out_cols: Sequence[int],  # per slice, first column of out (N_s columns are written)
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
) -> None:
    """out[t, col_s:col_s+N_s] += scale[slot(t)] * y[s, t, :r] @ weights[s][key(t), :, :r].T"""
    if meta.no_lora:
        return
    ys = y if meta.in_slot_order else y.index_select(1, meta.sorted_token_ids)
    if scale is not None:
        ys = ys * _row_scale(meta, scale)
    ys = ys.to(weights[0].dtype)
    r_max = ys.shape[2]
    for s, (w, col) in enumerate(zip(weights, out_cols, strict=True)):
        cols = slice(col, col + w.shape[1])
        for run, rank in _runs_with_ranks(meta, slot_ranks, r_max, w.shape[1] * w.element_size()):
            rows = slice(run.token_start, run.token_end)
            weights_t = _run_weights(w[:, :, :rank], meta, run).transpose(1, 2)
            target = out[rows, cols] if meta.in_slot_order else None
            if target is not None and target.is_contiguous() and out.dtype == ys.dtype:
                # Accumulate straight into out (C += A @ B in one pass) instead of writing a product and
                # adding it: the expand is bound by traffic over out's rows, not by its small matmul. Only
                # into a contiguous block: baddbmm_ into a strided view (one slice of a packed projection)
                # falls back to one addmm per matrix, ~7x slower than bmm + add off the main thread.
                _run_matmul_into(target, ys[s, rows, :rank], weights_t, run)
                continue
            part = _run_matmul(ys[s, rows, :rank], weights_t, run)
            if target is not None:
                target += part
            else:
                out[:, cols].index_add_(0, meta.sorted_token_ids[rows], part.to(out.dtype))


def segment_weight_grad_ref(
    u: Tensor,  # [S, T, r_max], the rank-side operand
    v: Tensor,  # [V, W], the wide operand
    v_rows: Tensor | None,  # [T_lora] row of v read by each sorted token; None: the token's own row
    v_cols: Sequence[int],  # per slice, first column of v (K_s columns are read)
    grads: Sequence[Tensor],  # per slice [num_keys, r_max, K_s], written where a key is active
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor | None,  # [num_slots] fp32, or None for 1
) -> None:
    """grads[s][key, :r] = scale[slot] * u[s, tokens(key), :r].T @ v[v_rows(tokens(key)), v_col_s:v_col_s+K_s]"""
    if meta.no_lora:
        return
    us = u if meta.in_slot_order else u.index_select(1, meta.sorted_token_ids)
    if scale is not None:
        us = us * _row_scale(meta, scale)
    in_place = v_rows is None and meta.in_slot_order
    vs = v if in_place else v.index_select(0, meta.sorted_token_ids if v_rows is None else v_rows)
    vs = vs.to(us.dtype)
    r_max = us.shape[2]
    for s, (g, col) in enumerate(zip(grads, v_cols, strict=True)):
        cols = slice(col, col + g.shape[2])
        for run, rank in _runs_with_ranks(meta, slot_ranks, r_max):
            rows = slice(run.token_start, run.token_end)
            n, k = run.num_keys, run.tokens_per_key
            part = torch.bmm(
                us[s, rows, :rank].reshape(n, k, rank).transpose(1, 2), vs[rows, cols].reshape(n, k, -1)
            )
            if run.keys:
                g[meta.key_index(run), :rank] = part
            else:
                g[run.first_key : run.first_key + n, :rank] = part


def lora_shrink_ref(
    x: Tensor,  # [T, in]
    lora_a: Tensor,  # [num_slices, num_slots, r_max, in]
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
) -> Tensor:
    """y[s, t, :r] = x[t] @ lora_a[s, slot[t], :r].T with r = slot_ranks[slot[t]]; y = 0 elsewhere.

    Returns y: [num_slices, T, r_max], fp32 (fp64 for fp64 x).
    """
    weights = dense_shrink_views(x, lora_a, meta, slot_ranks)
    return segment_shrink_ref(x, None, weights, [0] * len(weights), meta, slot_ranks, None)


def lora_expand_ref(
    y: Tensor,  # [num_slices, T, r_max]
    lora_b: Tensor,  # [num_slots, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T, total_out], updated in place
) -> None:
    """out[t, o[s]:o[s+1]] += scale[slot[t]] * y[s, t, :r] @ lora_b[slot[t], o[s]:o[s+1], :r].T; slot 0 untouched."""
    weights = dense_expand_views(y, lora_b, slice_offsets, meta, scale, out)
    segment_expand_ref(y, weights, out, slice_offsets[:-1], meta, slot_ranks, scale)


def lora_shrink_moe_ref(
    x: Tensor,  # [T, in] (shared by a token's top_k routes) or [T * top_k, in]
    lora_a: Tensor,  # [num_slices, num_slots, num_experts, r_max, in]
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
) -> Tensor:
    """y[s, row, :r] = x[src(row)] @ lora_a[s, slot(row), expert(row), :r].T; y: [num_slices, T * top_k, r_max]."""
    x_rows, weights = moe_shrink_views(x, lora_a, meta, slot_ranks)
    return segment_shrink_ref(x, x_rows, weights, [0] * len(weights), meta.rows, slot_ranks, None)


def lora_expand_moe_ref(
    y: Tensor,  # [num_slices, T * top_k, r_max]
    lora_b: Tensor,  # [num_slots, num_experts, total_out, r_max]
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    meta: MoELoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    out: Tensor,  # [T * top_k, total_out], updated in place
) -> None:
    """out[row, o[s]:o[s+1]] += scale[slot] * y[s, row, :r] @ lora_b[slot(row), expert(row), o[s]:o[s+1], :r].T"""
    weights = moe_expand_views(y, lora_b, slice_offsets, meta, scale, out)
    segment_expand_ref(y, weights, out, slice_offsets[:-1], meta.rows, slot_ranks, scale)
