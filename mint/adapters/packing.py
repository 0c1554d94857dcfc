"""Between PEFT's per-module layout and the base model's packed projections.

PEFT stores one (A, B) per module (q_proj, k_proj, ...). MinT's transformer packs q/k/v into `qkv_proj`
and gate/up into `gate_up_proj`, so a LoRA layer wraps a packed projection and holds one A per slice and
one B spanning all slices' output rows. `LoRATarget` describes one such layer; `pack` turns an adapter
into exactly the tensors a slot copy needs (untargeted slices are zero), `unpack` goes back.
"""

from __future__ import annotations

import dataclasses

import torch

from mint.adapters.config import AdapterConfig
from mint.adapters.peft import AdapterWeights
from mint.models.config import ModelConfig
from mint.models.transformer import packed_slices

# Packed projection (path inside a decoder layer) -> the PEFT modules it holds, in slice order.
PACKED_MODULES: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "self_attn.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
}


@dataclasses.dataclass(frozen=True, slots=True)
class LoRATarget:
    path: str  # inside a decoder layer, e.g. "self_attn.qkv_proj"
    modules: tuple[str, ...]  # PEFT module of each slice
    slice_widths: tuple[int, ...]  # output rows of each slice
    in_features: int

    @property
    def out_features(self) -> int:
        return sum(self.slice_widths)

    @property
    def offsets(self) -> tuple[int, ...]:
        out = [0]
        for width in self.slice_widths:
            out.append(out[-1] + width)
        return tuple(out)


def lora_targets(config: ModelConfig) -> list[LoRATarget]:
    """The packed projections of one decoder layer, with their slices."""
    widths = packed_slices(config)
    shapes = config.module_shapes()
    slices = {
        "self_attn.qkv_proj": tuple(widths["qkv_proj"]),
        "self_attn.o_proj": (shapes["o_proj"][1],),
        "mlp.gate_up_proj": tuple(widths["gate_up_proj"]),
        "mlp.down_proj": (shapes["down_proj"][1],),
    }
    return [
        LoRATarget(path=path, modules=modules, slice_widths=slices[path], in_features=shapes[modules[0]][0])
        for path, modules in PACKED_MODULES.items()
    ]


@dataclasses.dataclass(slots=True)
class PackedAdapter:
    """An adapter laid out for slot copies, every layer stacked: targets[path] = (A [layers, num_slices, r,
    in], B [layers, out, r]). A slot fill is then two copies per projection, whatever the depth."""

    rank: int
    scale: float
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.targets.values())


def pack(weights: AdapterWeights, config: ModelConfig, dtype: torch.dtype = torch.float32) -> PackedAdapter:
    r, layers = weights.config.r, config.num_layers
    targeted = weights.config.target_modules
    packed = {}
    for target in lora_targets(config):
        if not any(m in targeted for m in target.modules):
            continue
        a = torch.empty(layers, len(target.modules), r, target.in_features, dtype=dtype)
        b = torch.empty(layers, target.out_features, r, dtype=dtype)
        for s, module in enumerate(target.modules):
            rows = slice(target.offsets[s], target.offsets[s + 1])
            if module not in targeted:  # a slice of a packed projection the adapter leaves alone
                a[:, s].zero_()
                b[:, rows].zero_()
                continue
            for layer in range(layers):
                a_l, b_l = weights.tensors[(layer, module)]
                a[layer, s].copy_(a_l)
                b[layer, rows].copy_(b_l)
        packed[target.path] = (a, b)
    return PackedAdapter(rank=r, scale=weights.config.scaling, targets=packed)


def unpack(layers: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], config: AdapterConfig, model_config: ModelConfig) -> AdapterWeights:
    """Packed (A, B) per layer (at rank config.r) back to PEFT tensors for config.target_modules."""
    targets = {t.path: t for t in lora_targets(model_config)}
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for layer, packed in enumerate(layers):
        for path, (a, b) in packed.items():
            target = targets[path]
            for s, module in enumerate(target.modules):
                if module in config.target_modules:
                    rows = slice(target.offsets[s], target.offsets[s + 1])
                    tensors[(layer, module)] = (a[s].detach().clone(), b[rows].detach().clone())
    return AdapterWeights(config=config, tensors=tensors)
