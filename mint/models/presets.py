"""Random base models in Hugging Face format, for tests, demos and benchmarks where no real weights exist."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mint.models.config import ModelConfig
from mint.models.loading import save_model
from mint.models.tokenizer import CHATML_SPECIAL_TOKENS, write_byte_level_tokenizer
from mint.models.transformer import Transformer

INIT_STD = 0.02


def init_base(
    path: str | Path,
    *,
    arch: str = "llama",
    preset: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ModelConfig:
    """Write a random `preset` model of family `arch` to `path` (config.json, model.safetensors, tokenizer).

    The same arguments give byte-identical weights. Matrices are drawn from N(0, 0.02), as transformers
    initializes these families, norms are one and biases zero, so logits vary with the input instead of
    saturating.
    """
    path = Path(path)
    config = ModelConfig.from_name(preset, arch=arch)
    tokenizer = write_byte_level_tokenizer(path, vocab_size=config.vocab_size)
    end_of_text, im_start, im_end = (tokenizer.token_to_id(token) for token in CHATML_SPECIAL_TOKENS)
    config = dataclasses.replace(config, bos_token_id=im_start, eos_token_ids=(im_end, end_of_text))

    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives lm_head a storage of its own
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # named_parameters() has a fixed order and skips the tied lm_head, so each seed maps to one model.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, INIT_STD, generator=generator)
    save_model(model.to(dtype), path)
    return dataclasses.replace(config, torch_dtype=str(dtype).removeprefix("torch."))
