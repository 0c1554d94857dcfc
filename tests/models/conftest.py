"""Tiny random Hugging Face models (transformers is the oracle) and packed-batch helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from mint.models.attention import VarlenAttention

VOCAB = 320
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=1000.0,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
# Each case covers one family quirk; tied and untied embeddings are spread over them.
HF_CASES = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "llama-tied": lambda: LlamaConfig(**_COMMON, tie_word_embeddings=True),
    "llama3-rope": lambda: LlamaConfig(**_COMMON, rope_scaling=LLAMA3_ROPE),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=None, tie_word_embeddings=True),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    # head_dim 32 != hidden/heads (16): the explicit head_dim must be honoured.
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=32, tie_word_embeddings=True),
}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every tensor visibly moves the logits: norms away from one, biases away
    from zero (transformers initializes those to exactly 1 and 0, which would hide mapping mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.5 * noise)
            else:
                param.copy_(0.15 * noise)


@pytest.fixture(params=sorted(HF_CASES))
def hf_case(request) -> str:
    """Each case of HF_CASES in turn."""
    return request.param


@pytest.fixture
def hf_config(hf_case: str):
    """The transformers config of `hf_case`."""
    return HF_CASES[hf_case]()


@pytest.fixture
def hf_model(tmp_path: Path):
    """hf_model(case, **save_kwargs) -> (transformers model in eval mode, directory it was saved to)."""

    def build(case: str, seed: int = 0, **save_kwargs):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(HF_CASES[case](), dtype=torch.float32).eval()
        randomize_(model, seed)
        path = tmp_path / case
        model.save_pretrained(path, **save_kwargs)
        return model, path

    return build


def _packed_batch(lens: list[int], vocab: int = VOCAB, seed: int = 0, start: int = 0):
    generator = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, vocab, (n,), generator=generator) for n in lens]
    positions = torch.cat([torch.arange(start, start + n) for n in lens])
    return seqs, torch.cat(seqs), positions, VarlenAttention(lens)


def _hf_logits(model, seqs: list[torch.Tensor], start: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                model(input_ids=s[None], position_ids=torch.arange(start, start + len(s))[None]).logits[0]
                for s in seqs
            ]
        )


@pytest.fixture
def packed_batch():
    """packed_batch(lens, vocab=, seed=, start=) -> (per-sequence ids, flat ids, flat positions, attention)
    for random sequences of `lens` tokens whose positions begin at `start`."""
    return _packed_batch


@pytest.fixture
def hf_logits():
    """hf_logits(model, seqs, start=0): transformers logits one sequence at a time, concatenated like a
    packed batch."""
    return _hf_logits
