"""Builders for test data: base-model shapes and PEFT adapters (real safetensors bytes)."""

from __future__ import annotations

import json

import torch

from mint.adapters import LORA_MODULES, AdapterConfig, AdapterWeights

TINY_SHAPES = {
    "q_proj": (64, 64),
    "k_proj": (64, 32),
    "v_proj": (64, 32),
    "o_proj": (64, 64),
    "gate_proj": (64, 128),
    "up_proj": (64, 128),
    "down_proj": (128, 64),
}
TINY_LAYERS = 2


def make_adapter(
    rank: int = 4,
    *,
    alpha: float = 8.0,
    modules: tuple[str, ...] = LORA_MODULES,
    shapes: dict[str, tuple[int, int]] = TINY_SHAPES,
    num_layers: int = TINY_LAYERS,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> AdapterWeights:
    gen = torch.Generator().manual_seed(seed)
    config = AdapterConfig(r=rank, lora_alpha=alpha, target_modules=modules)
    tensors = {}
    for layer in range(num_layers):
        for module in config.target_modules:
            d_in, d_out = shapes[module]
            a = (torch.randn(rank, d_in, generator=gen) * 0.1).to(dtype)
            b = (torch.randn(d_out, rank, generator=gen) * 0.1).to(dtype)
            tensors[(layer, module)] = (a, b)
    return AdapterWeights(config=config, tensors=tensors)


def adapter_files(adapter: AdapterWeights) -> tuple[str, bytes]:
    """(adapter_config.json text, adapter_model.safetensors bytes)."""
    return json.dumps(adapter.config.to_dict()), adapter.to_safetensors()


def varint(value: int) -> bytes:
    """`value` as a protobuf base-128 varint (for hand-built wire bodies)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
