"""MoE expert LoRA: the reference against the definition, and the Triton launchers against the reference."""

import pytest
import torch

from kernels import MoELoRAMeta, lora_expand_moe_ref, lora_shrink_moe_ref
from tests.kernels.kernel_problems import DEVICE, assert_close

NUM_SLOTS, NUM_EXPERTS, TOP_K, R_MAX, IN = 4, 4, 2, 16, 24
OFFSETS = (0, 16, 32)  # fused gate/up


def _problem(num_tokens, shared_input, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.tensor([R_MAX, 16, 3, 8])
    slots = torch.randint(0, NUM_SLOTS, (num_tokens,), generator=gen)
    topk_ids = torch.stack([torch.randperm(NUM_EXPERTS, generator=gen)[:TOP_K] for _ in range(num_tokens)])
    a = torch.randn(2, NUM_SLOTS, NUM_EXPERTS, R_MAX, IN, generator=gen) / IN**0.5
    b = torch.randn(NUM_SLOTS, NUM_EXPERTS, OFFSETS[-1], R_MAX, generator=gen) / R_MAX**0.5
    for slot in range(1, NUM_SLOTS):
        a[:, slot, :, ranks[slot] :] = 0
        b[slot, :, :, ranks[slot] :] = 0
    x = torch.randn(num_tokens if shared_input else num_tokens * TOP_K, IN, generator=gen)
    scale = torch.rand(NUM_SLOTS, generator=gen) + 0.5
    meta = MoELoRAMeta.build(slots, topk_ids, NUM_EXPERTS, ranks)
    return slots, topk_ids, ranks, scale, x, a, b, meta


def _naive(slots, topk_ids, ranks, scale, x, a, b):
    rows = slots.numel() * TOP_K
    y = torch.zeros(2, rows, R_MAX)
    out = torch.zeros(rows, OFFSETS[-1])
    for t, slot in enumerate(slots.tolist()):
        for i, expert in enumerate(topk_ids[t].tolist()):
            row, rank = t * TOP_K + i, int(ranks[slot])
            if slot == 0:
                continue
            src = x[t] if x.shape[0] == slots.numel() else x[row]
            for s in range(2):
                y[s, row, :rank] = src @ a[s, slot, expert, :rank].T
                lo, hi = OFFSETS[s], OFFSETS[s + 1]
                out[row, lo:hi] = scale[slot] * y[s, row, :rank] @ b[slot, expert, lo:hi, :rank].T
    return y, out


@pytest.mark.parametrize("shared_input", [True, False], ids=["layer-input", "per-route-input"])
def test_moe_reference_matches_the_definition(shared_input):
    slots, topk_ids, ranks, scale, x, a, b, meta = _problem(9, shared_input)
    y_naive, out_naive = _naive(slots, topk_ids, ranks, scale, x, a, b)
    y = lora_shrink_moe_ref(x, a, meta, ranks)
    assert_close(y, y_naive, torch.float32)
    out = torch.zeros_like(out_naive)
    lora_expand_moe_ref(y, b, OFFSETS, meta, ranks, scale, out)
    assert_close(out, out_naive, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shared_input", [True, False], ids=["layer-input", "per-route-input"])
def test_moe_triton_matches_reference(shared_input, dtype):
    pytest.importorskip("triton")
    from kernels.lora_moe import lora_expand_moe_triton, lora_shrink_moe_triton

    slots, topk_ids, ranks, scale, x, a, b, _ = _problem(6, shared_input, seed=1)
    slots, topk_ids, ranks, scale = (t.to(DEVICE) for t in (slots, topk_ids, ranks, scale))
    x, a, b = (t.to(DEVICE, dtype) for t in (x, a, b))
    meta = MoELoRAMeta.build(slots, topk_ids, NUM_EXPERTS, ranks)
    y = lora_shrink_moe_triton(x, a, meta, ranks)
    y_ref = lora_shrink_moe_ref(x.float(), a.float(), meta, ranks)
    assert_close(y, y_ref, dtype)
    base = torch.randn(6 * TOP_K, OFFSETS[-1]).to(DEVICE, dtype)
    out = base.clone()
    lora_expand_moe_triton(y, b, OFFSETS, meta, ranks, scale, out)
    out_ref = base.float()
    lora_expand_moe_ref(y_ref, b.float(), OFFSETS, meta, ranks, scale, out_ref)
    assert_close(out, out_ref, dtype)
    unadapted = (slots == 0).repeat_interleave(TOP_K)
    assert unadapted.any() and torch.equal(out[unadapted], base[unadapted])
