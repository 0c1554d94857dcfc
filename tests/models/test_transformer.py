"""The packed transformer against transformers, on flattened ragged batches."""

import pytest
import torch
import torch.nn.functional as F

from mint.models.config import ModelConfig
from mint.models.loading import load_model
from mint.models.transformer import Transformer, packed_slices

TOLERANCE = 1e-4


def test_ragged_batch_matches_transformers(hf_case, hf_model, packed_batch, hf_logits):
    reference, path = hf_model(hf_case)
    model = load_model(path)
    seqs, ids, positions, attn = packed_batch([7, 1, 12])
    with torch.no_grad():
        logits = model.logits(model(ids, positions, attn))
    expected = hf_logits(reference, seqs)
    assert logits.dtype == torch.float32
    assert logits.shape == expected.shape == (20, reference.config.vocab_size)
    assert expected.std() > 0.5, "logits this flat would hide mapping mistakes"
    assert (logits - expected).abs().max() <= TOLERANCE


def test_equal_lengths_take_the_batched_path_and_match(hf_model, packed_batch, hf_logits):
    reference, path = hf_model("qwen3")
    model = load_model(path)
    seqs, ids, positions, attn = packed_batch([6, 6, 6], seed=1)
    with torch.no_grad():
        logits = model.logits(model(ids, positions, attn))
    assert (logits - hf_logits(reference, seqs)).abs().max() <= TOLERANCE


def test_llama3_rope_scaling_is_exercised(hf_model, packed_batch, hf_logits):
    plain, _ = hf_model("llama")
    scaled, _ = hf_model("llama3-rope")
    seqs, *_ = packed_batch([12])
    assert (hf_logits(plain, seqs) - hf_logits(scaled, seqs)).abs().max() > 1e-2


def test_positions_beyond_the_initial_rope_cache(hf_model, packed_batch, hf_logits):
    reference, path = hf_model("llama3-rope")
    model = load_model(path)
    # Positions 4090..4101 straddle the 4096 rows computed up front, so the cache has to grow.
    seqs, ids, positions, attn = packed_batch([12, 5], start=4090)
    with torch.no_grad():
        logits = model.logits(model(ids, positions, attn))
    assert (logits - hf_logits(reference, seqs, start=4090)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("lens", [[9, 4], [6, 6]], ids=["ragged", "equal"])
def test_gradients_flow_like_transformers(lens, hf_model, packed_batch):
    reference, path = hf_model("qwen2")
    model = load_model(path)
    assert not any(p.requires_grad for p in model.parameters()), "a loaded base is frozen"
    qkv = model.layers[0].self_attn.qkv_proj.weight.requires_grad_(True)
    gate_up = model.layers[1].mlp.gate_up_proj.weight.requires_grad_(True)
    seqs, ids, positions, attn = packed_batch(lens)
    targets = torch.roll(ids, -1)

    F.cross_entropy(model.logits(model(ids, positions, attn)), targets, reduction="sum").backward()
    start = 0
    for seq in seqs:
        logits = reference(input_ids=seq[None]).logits[0]
        F.cross_entropy(logits, targets[start : start + len(seq)], reduction="sum").backward()
        start += len(seq)

    attn_ref, mlp_ref = reference.model.layers[0].self_attn, reference.model.layers[1].mlp
    expected_qkv = torch.cat(
        [attn_ref.q_proj.weight.grad, attn_ref.k_proj.weight.grad, attn_ref.v_proj.weight.grad]
    )
    expected_gate_up = torch.cat([mlp_ref.gate_proj.weight.grad, mlp_ref.up_proj.weight.grad])
    for grad, expected in ((qkv.grad, expected_qkv), (gate_up.grad, expected_gate_up)):
        assert expected.abs().max() > 1e-2
        assert (grad - expected).abs().max() <= TOLERANCE * expected.abs().max()


def test_packed_layout_matches_packed_slices():
    config = ModelConfig.from_name("tiny", arch="qwen2")
    with torch.device("meta"):
        model = Transformer(config)
    slices = packed_slices(config)
    shapes = config.module_shapes()
    layer = model.layers[0]
    assert slices["qkv_proj"] == [shapes[m][1] for m in Transformer.packed_modules["qkv_proj"]]
    assert slices["gate_up_proj"] == [shapes[m][1] for m in Transformer.packed_modules["gate_up_proj"]]
    assert layer.self_attn.qkv_proj.weight.shape == (sum(slices["qkv_proj"]), config.hidden_size)
    assert layer.self_attn.qkv_proj.bias.shape == (sum(slices["qkv_proj"]),)
    assert layer.mlp.gate_up_proj.weight.shape == (sum(slices["gate_up_proj"]), config.hidden_size)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_parameter_count_matches_config():
    for arch in ("llama", "qwen2", "qwen3"):
        config = ModelConfig.from_name("tiny", arch=arch)
        with torch.device("meta"):
            model = Transformer(config)
        assert sum(p.numel() for p in model.parameters()) == config.num_parameters()
