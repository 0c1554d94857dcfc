"""Triton kernels against the torch reference: on the GPU when there is one, else on the CPU through
the Triton interpreter (fp32 and fp16 only: the interpreter does no bf16 arithmetic)."""

import pytest
import torch

from kernels import LoRAMeta, lora_expand, lora_expand_ref, lora_shrink, lora_shrink_ref
from tests.kernels.kernel_problems import DEVICE, assert_close, make_dense_problem

pytest.importorskip("triton")

from kernels.lora_expand import lora_expand_triton  # noqa: E402
from kernels.lora_shrink import lora_shrink_triton  # noqa: E402

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
# Small tiles so a few tokens and columns already span several programs and loop iterations.
SMALL_TILES = {
    "shrink": {"BLOCK_M": 16, "BLOCK_R": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1},
    "expand": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_R": 16, "num_warps": 4, "num_stages": 1},
}

CASES = [
    pytest.param(1, 1, [16], {}, id="t1-a1-r16"),
    pytest.param(12, 3, [1, 8, 5], {}, id="t12-a3-mixed-ranks"),
    pytest.param(16, 16, [8], {"with_base_tokens": False}, id="decode-t16-a16-r8"),
    pytest.param(6, 2, [128], {}, id="t6-a2-r128"),
    pytest.param(40, 2, [16], {}, id="prefill-t40-a2-r16"),
]
SLICES = [
    pytest.param((40,), id="1-slice"),
    pytest.param((24, 40), id="2-unequal"),
    pytest.param((32, 8, 8), id="3-gqa"),
]


def _shrink_expand(p, x, a, b, base, *, config=None):
    """(y, out) from the Triton launchers and from the reference on fp32 copies."""
    shrink_cfg, expand_cfg = (None, None) if config is None else (config["shrink"], config["expand"])
    y = lora_shrink_triton(x, a, p.meta, p.ranks, config=shrink_cfg)
    out = base.clone()
    lora_expand_triton(y, b, p.offsets, p.meta, p.ranks, p.scale, out, config=expand_cfg)
    y_ref = lora_shrink_ref(x.float(), a.float(), p.meta, p.ranks)
    out_ref = base.float()
    lora_expand_ref(y_ref, b.float(), p.offsets, p.meta, p.ranks, p.scale, out_ref)
    return y, out, y_ref, out_ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("widths", SLICES)
@pytest.mark.parametrize(("tokens", "adapters", "ranks", "kw"), CASES)
def test_shrink_expand_match_reference(tokens, adapters, ranks, kw, widths, dtype):
    p = make_dense_problem(tokens, adapters, ranks, widths, device=DEVICE, **kw)
    x, a, b = p.cast(dtype)
    base = torch.randn(tokens, p.offsets[-1]).to(DEVICE, dtype)
    y, out, y_ref, out_ref = _shrink_expand(p, x, a, b, base)
    assert y.dtype == torch.float32 and out.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_close(out, out_ref, dtype)
    unadapted = p.slots == 0
    assert torch.equal(out[unadapted], base[unadapted])


@pytest.mark.parametrize("widths", [(20, 37), (32, 8, 8)], ids=["2-unequal", "3-gqa"])
def test_small_tiles_cover_every_block(widths):
    # 40 tokens in 2 segments and 40 input columns: several token tiles, K steps and column blocks.
    p = make_dense_problem(40, 2, [24, 7], widths, in_features=40, device=DEVICE)
    x, a, b = p.cast(torch.float32)
    base = torch.zeros(40, p.offsets[-1], device=DEVICE)
    y, out, y_ref, out_ref = _shrink_expand(p, x, a, b, base, config=SMALL_TILES)
    assert_close(y, y_ref, torch.float32)
    assert_close(out, out_ref, torch.float32)


def test_weights_beyond_a_slots_rank_are_never_read():
    # NaN padding: a single masked-in element would poison the outputs. The reference reads padding
    # only in runs that mix ranks, which this layout (segments of different lengths) does not form.
    p = make_dense_problem(14, 3, [1, 5, 16], (20, 12), padding=float("nan"), device=DEVICE)
    assert all(run.num_keys == 1 for run in p.meta.runs)
    x, a, b = p.cast(torch.float32)
    base = torch.zeros(14, p.offsets[-1], device=DEVICE)
    y, out, y_ref, out_ref = _shrink_expand(p, x, a, b, base, config=SMALL_TILES)
    assert not y.isnan().any() and not out.isnan().any()
    assert_close(y, y_ref, torch.float32)
    assert_close(out, out_ref, torch.float32)


def test_cleared_slot_gives_exactly_the_base_output():
    p = make_dense_problem(12, 3, [8], (16, 8), device=DEVICE)
    x, a, b = p.cast(torch.float32)
    a[:, 2] = 0  # weights zeroed in place ...
    b[2] = 0
    p.ranks[3] = 0  # ... or the rank set to 0
    base = torch.randn(12, p.offsets[-1], device=DEVICE)
    out = base.clone()
    lora_expand_triton(lora_shrink_triton(x, a, p.meta, p.ranks), b, p.offsets, p.meta, p.ranks, p.scale, out)
    untouched = (p.slots == 0) | (p.slots == 2) | (p.slots == 3)
    assert torch.equal(out[untouched], base[untouched])
    assert (p.slots == 1).any() and not torch.equal(out[~untouched], base[~untouched])


def test_no_lora_step_launches_nothing():
    p = make_dense_problem(4, 1, [8], (8,), device=DEVICE)
    meta = LoRAMeta.build(torch.zeros(4, dtype=torch.int64, device=DEVICE))
    x, a, b = p.cast(torch.float32)
    y = lora_shrink_triton(x, a, meta, p.ranks)
    assert not y.any()
    out = torch.randn(4, 8, device=DEVICE)
    before = out.clone()
    lora_expand_triton(torch.ones_like(y), b, p.offsets, meta, p.ranks, p.scale, out)
    assert torch.equal(out, before)


def test_public_ops_run_triton_when_asked():
    p = make_dense_problem(6, 2, [4], (8,), device=DEVICE)
    y = lora_shrink(p.x, p.lora_a, p.meta, p.ranks, backend="triton")
    assert_close(y, lora_shrink(p.x, p.lora_a, p.meta, p.ranks, backend="torch"), torch.float32)
    out, out_ref = torch.zeros(6, 8, device=DEVICE), torch.zeros(6, 8, device=DEVICE)
    lora_expand(y, p.lora_b, p.offsets, p.meta, p.ranks, p.scale, out, backend="triton")
    lora_expand(y, p.lora_b, p.offsets, p.meta, p.ranks, p.scale, out_ref, backend="torch")
    assert_close(out, out_ref, torch.float32)
