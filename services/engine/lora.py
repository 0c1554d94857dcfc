"""Multi-LoRA as a module-swapping transform over the resident base (vLLM `lora/layers.py`-style).

`apply_lora(model, num_slots, max_rank)` replaces every packed projection with a `LoRALinear` that keeps
the base layer and preallocated slot tensors. Each step, the engine sets one `LoRABatch` (the kernels'
`LoRAMeta`: which token uses which slot) that every wrapped layer reads; slot 0 means no adapter. Slots
are filled and cleared with `set_slot` / `clear_slot`, between steps.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels import LoRAMeta, lora_expand, lora_shrink
from mint.adapters.packing import LoRATarget, PackedAdapter, lora_targets
from mint.models.transformer import Transformer


class LoRABatch:
    """State shared by every LoRA layer: per-slot scale, per-slot rank of each projection, and this step's
    token->slot metadata.

    Ranks are kept per projection (shared by all layers): an adapter that does not target a projection has
    rank 0 there, so the ops skip it instead of multiplying zeros (q,k,v,o adapters cost nothing in the MLP).
    """

    def __init__(self, num_slots: int, paths: list[str], device: torch.device):
        self.ranks = {path: torch.zeros(num_slots + 1, dtype=torch.int64, device=device) for path in paths}
        self.scale = torch.zeros(num_slots + 1, dtype=torch.float32, device=device)
        self.meta: LoRAMeta | None = None

    def set_tokens(self, token_slots: torch.Tensor) -> None:
        self.meta = LoRAMeta.build(token_slots)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, target: LoRATarget, batch: LoRABatch, num_slots: int, max_rank: int):
        super().__init__()
        self.base = base
        self.batch = batch
        self.slot_ranks = batch.ranks[target.path]
        self.offsets = target.offsets
        w = base.weight
        # Slot 0 stays zero: it is "no adapter".
        self.register_buffer(
            "lora_a", torch.zeros(len(target.modules), num_slots + 1, max_rank, target.in_features, dtype=w.dtype, device=w.device), persistent=False
        )
        self.register_buffer(
            "lora_b", torch.zeros(num_slots + 1, target.out_features, max_rank, dtype=w.dtype, device=w.device), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        meta = self.batch.meta
        if meta is None or meta.no_lora:
            return out
        y = lora_shrink(x, self.lora_a, meta, self.slot_ranks)
        lora_expand(y, self.lora_b, self.offsets, meta, self.slot_ranks, self.batch.scale, out)
        return out

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, previous_rank: int) -> None:
        """a: [num_slices, r, in]; b: [out, r]. Rows beyond r that a previous occupant used are zeroed,
        because the kernels compute up to the largest rank in a run and must read zeros there."""
        r = a.shape[1]
        self.lora_a[:, slot, :r].copy_(a)
        self.lora_b[slot, :, :r].copy_(b)
        if previous_rank > r:
            self.lora_a[:, slot, r:previous_rank].zero_()
            self.lora_b[slot, :, r:previous_rank].zero_()

    def clear_slot(self, slot: int) -> None:
        self.lora_a[:, slot].zero_()
        self.lora_b[slot].zero_()

    @property
    def slot_nbytes(self) -> int:
        return (self.lora_a[:, 0].nbytes + self.lora_b[0].nbytes)


class LoRAModel:
    """The base transformer with LoRA layers swapped in, and slot-level operations over all of them."""

    def __init__(self, model: Transformer, num_slots: int, max_rank: int):
        self.model = model
        self.num_slots = num_slots
        self.max_rank = max_rank
        device = model.embed_tokens.weight.device
        self.targets = lora_targets(model.config)
        self.batch = LoRABatch(num_slots, [t.path for t in self.targets], device)
        self.layers: list[dict[str, LoRALinear]] = []
        for layer in model.layers:
            wrapped = {}
            for target in self.targets:
                parent_name, _, attr = target.path.rpartition(".")
                parent = layer.get_submodule(parent_name)
                lora = LoRALinear(getattr(parent, attr), target, self.batch, num_slots, max_rank)
                setattr(parent, attr, lora)
                wrapped[target.path] = lora
            self.layers.append(wrapped)

    @property
    def slot_nbytes(self) -> int:
        return sum(layer.slot_nbytes for layers in self.layers for layer in layers.values())

    def set_slot(self, slot: int, adapter: PackedAdapter) -> None:
        assert 1 <= slot <= self.num_slots, slot
        assert adapter.rank <= self.max_rank, (adapter.rank, self.max_rank)
        targeted = adapter.layers[0].keys()
        for path, ranks in self.batch.ranks.items():
            previous = int(ranks[slot])  # what the slot's last occupant left in this projection
            for layer, packed in zip(self.layers, adapter.layers, strict=True):
                if path in targeted:
                    a, b = packed[path]
                    layer[path].set_slot(slot, a, b, previous)
                elif previous:
                    layer[path].clear_slot(slot)
            ranks[slot] = adapter.rank if path in targeted else 0
        self.batch.scale[slot] = adapter.scale

    def clear_slot(self, slot: int) -> None:
        for path, ranks in self.batch.ranks.items():
            if int(ranks[slot]):
                for layer in self.layers:
                    layer[path].clear_slot(slot)
            ranks[slot] = 0
        self.batch.scale[slot] = 0.0


def apply_lora(model: Transformer, num_slots: int, max_rank: int) -> LoRAModel:
    return LoRAModel(model, num_slots, max_rank)
