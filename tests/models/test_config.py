import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mint.errors import Code, MintError
from mint.models.config import ModelConfig


def test_hf_config_round_trip(hf_config, tmp_path):
    config = ModelConfig.from_hf(hf_config.to_dict())
    assert ModelConfig.from_hf(config.to_hf()) == config

    # transformers reads what to_hf writes into an equivalent config.
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    reread = AutoConfig.from_pretrained(tmp_path)
    assert type(reread) is type(hf_config)
    for key in ("hidden_size", "num_key_value_heads", "tie_word_embeddings", "rope_parameters"):
        assert getattr(reread, key) == getattr(hf_config, key), key
    default_head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    assert reread.head_dim == (getattr(hf_config, "head_dim", None) or default_head_dim) == config.head_dim
    with torch.device("meta"):
        assert AutoModelForCausalLM.from_config(reread).num_parameters() == config.num_parameters()


def test_transformers_4_spelling_is_read():
    config = ModelConfig.from_hf(
        {
            "model_type": "llama",
            "vocab_size": 100,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "eos_token_id": [7, 9],
            "torch_dtype": "bfloat16",
        }
    )
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == {
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert config.num_kv_heads == 4 and config.head_dim == 16
    assert config.eos_token_ids == (7, 9) and config.dtype == torch.bfloat16


_BASE = {
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 32768,
}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window=4096"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 1024}, "sliding_window=1024"),
        ({"model_type": "llama", "attention_bias": True}, "o_proj bias"),
        ({"model_type": "llama", "mlp_bias": True}, "mlp_bias"),
        ({"model_type": "llama", "hidden_act": "gelu"}, "'gelu'"),
        ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
        ({"model_type": "llama", "num_key_value_heads": 3}, "multiple of num_kv_heads"),
        ({"model_type": "qwen3", "vocab_size": None}, "vocab_size must be a positive integer"),
        ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks"),
    ],
)
def test_unsupported_configs_are_refused(overrides, fragment):
    with pytest.raises(MintError) as err:
        ModelConfig.from_hf({**_BASE, **overrides})
    assert err.value.code is Code.INVALID_ARGUMENT
    assert fragment in err.value.message


def test_missing_required_keys_are_named():
    config = {**_BASE, "model_type": "llama"}
    del config["intermediate_size"]
    with pytest.raises(MintError) as err:
        ModelConfig.from_hf(config)
    assert err.value.code is Code.INVALID_ARGUMENT and "intermediate_size" in err.value.message


def test_a_window_as_long_as_the_context_is_full_attention():
    config = ModelConfig.from_hf({**_BASE, "model_type": "mistral", "sliding_window": 32768})
    assert config.architecture == "mistral"


def test_presets():
    smol = ModelConfig.from_name("smollm2-shape")
    shapes = smol.module_shapes()
    assert (
        shapes["q_proj"] == (576, 576)
        and shapes["k_proj"] == (576, 192)
        and shapes["down_proj"] == (1536, 576)
    )
    # PERFORMANCE.md: 134.5M parameters; LoRA on all seven modules costs 10,176 x r per layer.
    assert smol.num_parameters() == 134_515_008
    assert sum(fan_in + fan_out for fan_in, fan_out in shapes.values()) == 10_176

    assert ModelConfig.from_name("tiny", arch="qwen2").attention_bias
    assert ModelConfig.from_name("tiny", arch="qwen3").qk_norm
    for bad in ({"preset": "huge"}, {"preset": "tiny", "arch": "gpt2"}):
        with pytest.raises(MintError) as err:
            ModelConfig.from_name(**bad)
        assert err.value.code is Code.INVALID_ARGUMENT
