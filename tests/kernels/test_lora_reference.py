"""The torch reference (CPU path and oracle) against the ops' definitions, computed token by token."""

import pytest
import torch

from kernels import LoRAMeta, lora_expand_ref, lora_linear_delta, lora_shrink_ref, reference
from kernels.dispatch import resolve_backend
from tests.kernels.kernel_problems import assert_close, make_dense_problem, naive_delta, naive_shrink

CASES = [
    pytest.param(1, 1, [4], (8,), {}, id="one-token"),
    pytest.param(12, 3, [1, 8, 5], (16, 8), {}, id="mixed-ranks-base-tokens"),
    pytest.param(16, 16, [4, 4, 2], (8, 4, 4), {"with_base_tokens": False}, id="decode-runs-mixed-ranks"),
    pytest.param(10, 4, [3], (8,), {"with_base_tokens": False, "sorted_tokens": True}, id="in-slot-order"),
    pytest.param(9, 2, [128], (6, 5), {}, id="rank-128"),
    pytest.param(12, 8, [2, 1], (8, 4), {"with_base_tokens": False, "gaps": True}, id="scattered-slots"),
    pytest.param(14, 5, [4, 2], (8,), {"gaps": True}, id="scattered-slots-base-tokens"),
]


@pytest.mark.parametrize(("tokens", "adapters", "ranks", "widths", "kw"), CASES)
def test_reference_matches_the_definition(tokens, adapters, ranks, widths, kw):
    p = make_dense_problem(tokens, adapters, ranks, widths, **kw)
    y = lora_shrink_ref(p.x, p.lora_a, p.meta, p.ranks)
    assert y.dtype == torch.float32
    assert_close(y, naive_shrink(p, p.x, p.lora_a), torch.float32)
    base = torch.randn(tokens, p.offsets[-1])
    out = base.clone()
    lora_expand_ref(y, p.lora_b, p.offsets, p.meta, p.ranks, p.scale, out)
    assert_close(out, base + naive_delta(p, p.x, p.lora_a, p.lora_b), torch.float32)
    unadapted = p.slots == 0
    assert torch.equal(out[unadapted], base[unadapted])


def test_cleared_slot_gives_exactly_the_base_output():
    p = make_dense_problem(12, 3, [8], (16, 8))
    p.lora_a[:, 2].zero_()
    p.lora_b[2].zero_()
    base = torch.randn(12, p.offsets[-1])
    out = base.clone()
    lora_expand_ref(
        lora_shrink_ref(p.x, p.lora_a, p.meta, p.ranks), p.lora_b, p.offsets, p.meta, p.ranks, p.scale, out
    )
    untouched = (p.slots == 0) | (p.slots == 2)
    assert untouched.any() and torch.equal(out[untouched], base[untouched])
    assert not torch.equal(out[~untouched], base[~untouched])


def test_no_lora_step_leaves_out_untouched():
    p = make_dense_problem(6, 2, [4], (8,))
    meta = LoRAMeta.build(torch.zeros(6, dtype=torch.int64))
    y = lora_shrink_ref(p.x, p.lora_a, meta, p.ranks)
    assert not y.any()
    out = torch.randn(6, 8)
    before = out.clone()
    lora_expand_ref(torch.randn_like(y), p.lora_b, p.offsets, meta, p.ranks, p.scale, out)
    assert torch.equal(out, before)


@pytest.mark.parametrize("gather_max_key_bytes", [256 * 1024, 0], ids=["gathered", "in-pieces"])
def test_a_decode_over_scattered_slots_is_one_run_and_matches_the_definition(monkeypatch, gather_max_key_bytes):
    monkeypatch.setattr(reference, "GATHER_MAX_KEY_BYTES", gather_max_key_bytes)
    p = make_dense_problem(6, 6, [3, 1, 2], (8, 4), with_base_tokens=False, gaps=True)
    (run,) = p.meta.runs
    assert run.keys == (1, 3, 5, 7, 9, 11)
    y = lora_shrink_ref(p.x, p.lora_a, p.meta, p.ranks)
    assert_close(y, naive_shrink(p, p.x, p.lora_a), torch.float32)
    out = torch.zeros(6, p.offsets[-1])
    lora_expand_ref(y, p.lora_b, p.offsets, p.meta, p.ranks, p.scale, out)
    assert_close(out, naive_delta(p, p.x, p.lora_a, p.lora_b), torch.float32)
    # Backward too: the weight gradients land in the scattered slots (and nowhere else).
    x, a, b = (t.double().requires_grad_() for t in p.cast(torch.float64))
    delta = lora_linear_delta(x, a, b, p.meta, p.ranks, p.scale, p.offsets, backend="torch")
    delta.backward(torch.randn_like(delta))
    assert torch.autograd.gradcheck(
        lambda x, a, b: lora_linear_delta(x, a, b, p.meta, p.ranks, p.scale, p.offsets, backend="torch"), (x, a, b)
    )
    untouched = [slot for slot in range(p.ranks.numel()) if slot not in run.keys]
    assert not a.grad[:, untouched].any() and not b.grad[untouched].any()


@pytest.mark.parametrize(
    ("kw", "widths"),
    [
        ({}, (4, 3)),
        ({"with_base_tokens": False}, (3, 2, 2)),
        ({"with_base_tokens": False, "sorted_tokens": True}, (5,)),
        ({"with_base_tokens": False, "gaps": True}, (3, 2)),
    ],
    ids=["base-tokens-2-slices", "decode-runs-3-slices", "in-slot-order", "scattered-slots"],
)
def test_gradcheck_fp64(kw, widths):
    p = make_dense_problem(7, 3, [3, 1, 2], widths, in_features=6, **kw)
    x, a, b = (t.double().requires_grad_() for t in p.cast(torch.float64))

    def delta(x, a, b):
        return lora_linear_delta(x, a, b, p.meta, p.ranks, p.scale, p.offsets, backend="torch")

    assert torch.autograd.gradcheck(delta, (x, a, b))
    assert_close(delta(x, a, b), naive_delta(p, x, a, b), torch.float64)


def test_auto_backend_runs_cpu_tensors_on_the_reference():
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    assert resolve_backend("triton", torch.zeros(1)) == "triton"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.zeros(1))
