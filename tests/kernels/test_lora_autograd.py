"""Gradients of the LoRA ops: the Triton backward against the reference backward (fp32 tolerance)."""

import pytest
import torch

from kernels import LoRAExpandFn, LoRAShrinkFn, lora_linear_delta
from tests.kernels.kernel_problems import DEVICE, assert_close, make_dense_problem, naive_delta

pytest.importorskip("triton")


def _grads(p, backend, dout):
    """delta and the grads of <delta, dout> wrt x, the per-session A parameters stacked into lora_a
    (a non-leaf, as the trainer builds it), and lora_b."""
    x, a, b = (t.requires_grad_() for t in p.cast(torch.float32))
    sessions = [s.detach().requires_grad_() for s in a.unbind(1)]
    lora_a = torch.stack(sessions, dim=1)
    delta = lora_linear_delta(x, lora_a, b, p.meta, p.ranks, p.scale, p.offsets, backend=backend)
    (delta * dout).sum().backward()
    return delta, x.grad, torch.stack([s.grad for s in sessions], dim=1), b.grad


@pytest.mark.parametrize(
    ("tokens", "adapters", "ranks", "widths", "kw"),
    [
        pytest.param(12, 3, [1, 8, 5], (24, 8, 8), {}, id="3-gqa-mixed-ranks"),
        pytest.param(20, 2, [20], (16, 24), {"in_features": 40}, id="2-unequal-r20"),
        pytest.param(8, 8, [4], (16,), {"with_base_tokens": False}, id="decode-1-slice"),
    ],
)
def test_triton_grads_match_reference(tokens, adapters, ranks, widths, kw):
    p = make_dense_problem(tokens, adapters, ranks, widths, device=DEVICE, **kw)
    dout = torch.randn(tokens, p.offsets[-1], generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected = _grads(p, "torch", dout)
    actual = _grads(p, "triton", dout)
    for got, want in zip(actual, expected, strict=True):
        assert_close(got, want, torch.float32)
    assert_close(expected[0], naive_delta(p, p.x, p.lora_a, p.lora_b), torch.float32)
    # No gradient reaches slot 0 or the unused slot.
    _, _, grad_a, grad_b = actual
    unused = torch.ones(p.ranks.numel(), dtype=torch.bool, device=DEVICE)
    unused[p.slots.unique()] = False
    unused[0] = True
    assert not grad_a[:, unused].any() and not grad_b[unused].any()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_gradient_leaks_past_a_slots_rank(backend):
    # Upstream gradients arrive dense, padding included. Segments of different lengths form no
    # multi-slot run, so the reference computes exact ranks here too.
    p = make_dense_problem(14, 3, [1, 5, 16], (20, 12), device=DEVICE)
    assert all(run.num_keys == 1 for run in p.meta.runs)
    gen = torch.Generator().manual_seed(2)
    x, a, b = (t.requires_grad_() for t in p.cast(torch.float32))
    y = LoRAShrinkFn.apply(x, a, p.meta, p.ranks, backend)
    y.backward(torch.randn(y.shape, generator=gen).to(DEVICE))
    y_in = torch.randn(y.shape, generator=gen).to(DEVICE).requires_grad_()
    delta = LoRAExpandFn.apply(y_in, b, p.offsets, p.meta, p.ranks, p.scale, torch.float32, backend)
    delta.backward(torch.randn(delta.shape, generator=gen).to(DEVICE))
    for slot in range(1, 4):
        rank = int(p.ranks[slot])
        assert a.grad[:, slot, :rank].any() and not a.grad[:, slot, rank:].any()
        assert b.grad[slot, :, :rank].any() and not b.grad[slot, :, rank:].any()
        assert not y_in.grad[:, p.slots == slot, rank:].any()
    assert not y_in.grad[:, p.slots == 0].any()


def test_functions_compose_like_the_combined_delta():
    p = make_dense_problem(9, 2, [6], (8, 8), device=DEVICE)
    x, a, b = p.cast(torch.float32)
    y = LoRAShrinkFn.apply(x, a, p.meta, p.ranks, "triton")
    delta = LoRAExpandFn.apply(y, b, p.offsets, p.meta, p.ranks, p.scale, torch.float32, "triton")
    expected = lora_linear_delta(x, a, b, p.meta, p.ranks, p.scale, p.offsets, backend="torch")
    assert_close(delta, expected, torch.float32)
