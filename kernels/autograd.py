"""Differentiable LoRA ops for training: grads wrt the input and both adapter weight tensors.

The backward of shrink is expand-shaped (dx = dy @ A, every slice adding into x's columns) plus a
per-segment reduction (dA = dy^T @ x over each slot's tokens); the backward of expand is
shrink-shaped (dy = scale * dout @ B over each slice's columns) plus dB = scale * dout^T @ y. All run
on the same segment primitives as the forward, on the backend the forward used. Weights may be
non-leaf tensors (e.g. a `torch.stack` of several sessions' parameters): gradients flow through.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.contracts import dense_expand_views, dense_shrink_views, slice_rows
from kernels.dispatch import Backend, resolve_backend, segment_ops
from kernels.metadata import LoRAMeta


class LoRAShrinkFn(torch.autograd.Function):
    """y = lora_shrink(x, lora_a, meta, slot_ranks), differentiable wrt x and lora_a."""

    @staticmethod
    def forward(
        ctx, x: Tensor, lora_a: Tensor, meta: LoRAMeta, slot_ranks: Tensor, backend: Backend = "auto"
    ):
        resolved = resolve_backend(backend, x)
        weights = dense_shrink_views(x, lora_a, meta, slot_ranks)
        y = segment_ops(resolved).shrink(x, None, weights, [0] * len(weights), meta, slot_ranks, None)
        ctx.save_for_backward(x, lora_a, slot_ranks)
        ctx.meta, ctx.backend = meta, resolved
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, lora_a, slot_ranks = ctx.saved_tensors
        meta, ops = ctx.meta, segment_ops(ctx.backend)
        grad_y = grad_y.contiguous()
        num_slices = lora_a.shape[0]
        grad_x = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x)
            a_t = [a.transpose(1, 2) for a in lora_a.unbind(0)]
            ops.expand(grad_y, a_t, grad_x, [0] * num_slices, meta, slot_ranks, None)
        if ctx.needs_input_grad[1]:
            grad_a = torch.zeros_like(lora_a)
            ops.weight_grad(grad_y, x, None, [0] * num_slices, list(grad_a.unbind(0)), meta, slot_ranks, None)
        return grad_x, grad_a, None, None, None


class LoRAExpandFn(torch.autograd.Function):
    """delta = lora_expand(y, ...) into a zero [T, total_out] tensor of `out_dtype`; differentiable wrt
    y and lora_b. Tokens without an adapter get a zero delta."""

    @staticmethod
    def forward(
        ctx,
        y: Tensor,
        lora_b: Tensor,
        slice_offsets: tuple[int, ...],
        meta: LoRAMeta,
        slot_ranks: Tensor,
        scale: Tensor,
        out_dtype: torch.dtype,
        backend: Backend = "auto",
    ):
        resolved = resolve_backend(backend, y)
        delta = torch.zeros(meta.num_tokens, lora_b.shape[1], dtype=out_dtype, device=y.device)
        weights = dense_expand_views(y, lora_b, slice_offsets, meta, scale, delta)
        segment_ops(resolved).expand(y, weights, delta, slice_offsets[:-1], meta, slot_ranks, scale)
        ctx.save_for_backward(y, lora_b, slot_ranks, scale)
        ctx.slice_offsets, ctx.meta, ctx.backend = slice_offsets, meta, resolved
        return delta

    @staticmethod
    def backward(ctx, grad_delta: Tensor):
        y, lora_b, slot_ranks, scale = ctx.saved_tensors
        meta, ops, offsets = ctx.meta, segment_ops(ctx.backend), ctx.slice_offsets
        grad_delta = grad_delta.contiguous()
        grad_y = grad_b = None
        if ctx.needs_input_grad[0]:
            b_t = [b.transpose(1, 2) for b in slice_rows(lora_b, offsets)]
            grad_y = ops.shrink(grad_delta, None, b_t, offsets[:-1], meta, slot_ranks, scale).to(y.dtype)
        if ctx.needs_input_grad[1]:
            grad_b = torch.zeros_like(lora_b)
            grads = [g.transpose(1, 2) for g in slice_rows(grad_b, offsets)]
            ops.weight_grad(y, grad_delta, None, offsets[:-1], grads, meta, slot_ranks, scale)
        return grad_y, grad_b, None, None, None, None, None, None


def lora_linear_delta(
    x: Tensor,  # [T, in]
    lora_a: Tensor,  # [num_slices, num_slots, r_max, in]
    lora_b: Tensor,  # [num_slots, total_out, r_max]
    meta: LoRAMeta,
    slot_ranks: Tensor,  # [num_slots] int
    scale: Tensor,  # [num_slots] fp32
    slice_offsets: tuple[int, ...],  # num_slices + 1 ascending column offsets, 0 .. total_out
    *,
    backend: Backend = "auto",
) -> Tensor:
    """delta[t, o[s]:o[s+1]] = scale[slot[t]] * x[t] @ A[s, slot[t], :r].T @ B[slot[t], o[s]:o[s+1], :r].T

    Returns delta: [T, total_out] in x's dtype, zero for tokens without an adapter; differentiable
    wrt x, lora_a and lora_b.
    """
    y = LoRAShrinkFn.apply(x, lora_a, meta, slot_ranks, backend)
    return LoRAExpandFn.apply(y, lora_b, slice_offsets, meta, slot_ranks, scale, x.dtype, backend)
