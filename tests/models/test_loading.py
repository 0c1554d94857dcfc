"""Hugging Face directories in and out: loading, saving, sharding, hashing, random bases."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from mint.errors import Code, MintError
from mint.models.loading import INDEX_FILE, load_model, save_model, weights_sha256
from mint.models.presets import init_base

TOLERANCE = 1e-4


def _params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


def test_save_model_round_trips_through_transformers(hf_model, tmp_path, packed_batch, hf_logits):
    _, path = hf_model("qwen2")
    model = load_model(path)
    save_model(model, tmp_path / "saved")

    again = load_model(tmp_path / "saved")
    assert _params(again).keys() == _params(model).keys()
    assert all(
        torch.equal(a, b) for a, b in zip(_params(again).values(), _params(model).values(), strict=True)
    )
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        assert "model.layers.1.self_attn.k_proj.bias" in list(f.keys())

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    seqs, ids, positions, attn = packed_batch([5, 8])
    with torch.no_grad():
        logits = again.logits(again(ids, positions, attn))
    assert (logits - hf_logits(reference, seqs)).abs().max() <= TOLERANCE


def test_sharded_checkpoints_load_save_and_hash_alike(hf_model, tmp_path, packed_batch, hf_logits):
    reference, path = hf_model("llama", max_shard_size="60KB")
    assert (path / INDEX_FILE).is_file() and len(list(path.glob("model-*.safetensors"))) > 1
    model = load_model(path)
    seqs, ids, positions, attn = packed_batch([3, 6])
    with torch.no_grad():
        assert (
            model.logits(model(ids, positions, attn)) - hf_logits(reference, seqs)
        ).abs().max() <= TOLERANCE

    save_model(model, tmp_path / "single")
    save_model(model, tmp_path / "sharded", max_shard_bytes=50_000)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    index = json.loads((tmp_path / "sharded" / INDEX_FILE).read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "single" / INDEX_FILE).exists()
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            _params(load_model(tmp_path / "sharded")).values(), _params(model).values(), strict=True
        )
    )
    # One digest for the same weights however they are split into files; another when one value moves.
    assert weights_sha256(tmp_path / "single") == weights_sha256(tmp_path / "sharded") == weights_sha256(path)
    with torch.no_grad():
        model.norm.weight[0] += 1.0
    save_model(model, tmp_path / "changed")
    assert weights_sha256(tmp_path / "changed") != weights_sha256(tmp_path / "single")


def test_tied_embeddings_stay_tied(hf_model):
    _, path = hf_model("mistral")
    model = load_model(path, dtype=torch.bfloat16)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.config.torch_dtype == "bfloat16"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in list(f.keys())


def test_bfloat16_load_is_close_to_float32(hf_model, packed_batch):
    _, path = hf_model("qwen3")
    seqs, ids, positions, attn = packed_batch([6, 2])
    with torch.no_grad():
        full = load_model(path)
        half = load_model(path, dtype=torch.bfloat16)
        expected = full.logits(full(ids, positions, attn))
        logits = half.logits(half(ids, positions, attn))
    assert logits.dtype == torch.float32
    assert (logits - expected).abs().max() <= 0.05 * expected.abs().max()


def _expect_error(code, fragment, call, *args, **kwargs):
    with pytest.raises(MintError) as err:
        call(*args, **kwargs)
    assert err.value.code is code, err.value
    assert fragment in err.value.message, err.value.message


def test_missing_unexpected_and_misshapen_tensors_are_named(hf_model):
    _, path = hf_model("llama")
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))

    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(weights))
    _expect_error(Code.INVALID_ARGUMENT, "model.layers.1.mlp.up_proj.weight", load_model, path)

    save_file({**tensors, "model.layers.0.mlp.extra.weight": torch.zeros(2)}, str(weights))
    _expect_error(Code.INVALID_ARGUMENT, "model.layers.0.mlp.extra.weight", load_model, path)

    # Checkpoints that saved rope buffers load anyway.
    save_file({**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}, str(weights))
    load_model(path)

    save_file({**tensors, "model.layers.0.self_attn.k_proj.weight": torch.zeros(16, 64)}, str(weights))
    _expect_error(Code.INVALID_ARGUMENT, "self_attn.k_proj.weight", load_model, path)


def test_directories_without_usable_weights(tmp_path, hf_model):
    _expect_error(Code.NOT_FOUND, "does not exist", load_model, tmp_path / "nowhere")
    _expect_error(Code.NOT_FOUND, "config.json", load_model, tmp_path)

    _, path = hf_model("llama")
    config = (path / "config.json").read_text()
    (path / "model.safetensors").unlink()
    # Not a pickle at all: the loader must refuse by name, without opening it.
    (path / "pytorch_model.bin").write_bytes(b"not a pickle")
    _expect_error(Code.INVALID_ARGUMENT, "never unpickles", load_model, path)

    (path / "config.json").write_text(config.replace('"model_type": "llama"', '"model_type": "gpt_neox"'))
    _expect_error(Code.INVALID_ARGUMENT, "gpt_neox", load_model, path)


def test_missing_shard_is_reported(hf_model):
    _, path = hf_model("llama", max_shard_size="60KB")
    next(path.glob("model-*.safetensors")).unlink()
    _expect_error(Code.NOT_FOUND, "missing", load_model, path)


def test_save_refuses_to_mix_with_existing_weights(hf_model):
    _, path = hf_model("llama")
    _expect_error(Code.ALREADY_EXISTS, "already holds", save_model, load_model(path), path)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_init_base_is_deterministic_and_loads_in_transformers(arch, tmp_path, packed_batch, hf_logits):
    config = init_base(tmp_path / "a", arch=arch, seed=3)
    init_base(tmp_path / "b", arch=arch, seed=3)
    init_base(tmp_path / "c", arch=arch, seed=4)
    assert weights_sha256(tmp_path / "a") == weights_sha256(tmp_path / "b") != weights_sha256(tmp_path / "c")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()

    model = load_model(tmp_path / "a")
    assert model.config == config
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()
    assert reference.num_parameters() == config.num_parameters()
    seqs, ids, positions, attn = packed_batch([9, 4], vocab=config.vocab_size)
    with torch.no_grad():
        logits = model.logits(model(ids, positions, attn))
    assert (logits - hf_logits(reference, seqs)).abs().max() <= TOLERANCE
    # Not degenerate: logits spread over the vocabulary, and the favourite token depends on the input.
    assert logits.std(dim=-1).min() > 0.1
    assert len(set(logits.argmax(dim=-1).tolist())) > 1
