"""LoRA for training many sessions in one pass over the shared, frozen base.

Each packed projection is swapped for a `TrainLoRALinear`. Before a pass, `LoRAPass` stacks the
participating sessions' parameters into slot tensors (slot i + 1 is session i; slot 0 is the base) with
`torch.stack`, so gradients flow back into every session's own tensors through the kernels' autograd ops.
Sessions of different ranks are zero-padded to the largest; the ops never compute past a slot's rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import LoRAMeta, lora_linear_delta
from mint.adapters.packing import LoRATarget, lora_targets
from mint.models.transformer import Transformer


class LoRAPass:
    """The per-pass state every layer reads: token->slot metadata and stacked weights per layer/target."""

    def __init__(self, sessions: list, token_slots: torch.Tensor):
        device = token_slots.device
        ranks = [0] + [s.config.r for s in sessions]
        self.r_max = max(ranks)
        self.slot_ranks = torch.tensor(ranks, dtype=torch.int64, device=device)
        self.scale = torch.tensor([0.0] + [s.config.scaling for s in sessions], dtype=torch.float32, device=device)
        self.meta = LoRAMeta.build(token_slots, self.slot_ranks)
        self.sessions = sessions

    def weights(self, layer: int, path: str, target: LoRATarget, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [num_slices, slots, r_max, in], B [slots, out, r_max]) for one layer's projection."""
        r = self.r_max
        a_zero = like.new_zeros(len(target.modules), r, target.in_features)
        b_zero = like.new_zeros(target.out_features, r)
        a_list, b_list = [a_zero], [b_zero]
        for session in self.sessions:
            pair = session.params[layer].get(path)
            if pair is None:
                a_list.append(a_zero)
                b_list.append(b_zero)
                continue
            a, b = pair
            pad = r - a.shape[1]
            a_list.append(F.pad(a, (0, 0, 0, pad)) if pad else a)
            b_list.append(F.pad(b, (0, pad)) if pad else b)
        return torch.stack(a_list, dim=1), torch.stack(b_list, dim=0)


class TrainLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, layer: int, path: str, target: LoRATarget, owner: TrainableLoRA):
        super().__init__()
        self.base = base
        self.layer, self.path, self.target = layer, path, target
        self.offsets = target.offsets
        self.owner = owner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        lora = self.owner.current
        if lora is None or lora.meta.no_lora:
            return out
        a, b = lora.weights(self.layer, self.path, self.target, self.base.weight)
        return out + lora_linear_delta(x, a, b, lora.meta, lora.slot_ranks, lora.scale, self.offsets)


class TrainableLoRA:
    """The frozen base with trainable-LoRA layers swapped in; `current` is set for the length of a pass."""

    def __init__(self, model: Transformer):
        self.model = model
        self.current: LoRAPass | None = None
        for param in model.parameters():
            param.requires_grad_(False)
        for index, layer in enumerate(model.layers):
            for target in lora_targets(model.config):
                parent_name, _, attr = target.path.rpartition(".")
                parent = layer.get_submodule(parent_name)
                setattr(parent, attr, TrainLoRALinear(getattr(parent, attr), index, target.path, target, self))
