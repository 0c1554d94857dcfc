"""Multi-LoRA as a module-swapping transform over the resident base (vLLM `lora/layers.py`-style).

`apply_lora(model, num_slots, max_rank)` replaces every packed projection with a `LoRALinear` that keeps
the base layer and preallocated slot tensors. Each step, the engine sets one `LoRABatch` (the kernels'
`LoRAMeta`: which token uses which slot) that every wrapped layer reads; slot 0 means no adapter. Slots
are filled and cleared with `set_slot` / `clear_slot`, between steps, by the slot manager (slots.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernels import LoRAMeta, lora_expand, lora_shrink
from mint.adapters.packing import LoRATarget, PackedAdapter, lora_targets
from mint.models.transformer import Transformer

_FLOAT32_MAX = torch.finfo(torch.float32).max


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
    def __init__(self, base: nn.Linear, target: LoRATarget, batch: LoRABatch, lora_a: torch.Tensor, lora_b: torch.Tensor):
        """lora_a [num_slices, slots + 1, max_rank, in], lora_b [slots + 1, out, max_rank]: this layer's views of
        the projection's slot tensors, which hold every layer so that a slot fill is one copy each."""
        super().__init__()
        self.base = base
        self.batch = batch
        self.slot_ranks = batch.ranks[target.path]
        self.offsets = target.offsets
        self.lora_a, self.lora_b = lora_a, lora_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        meta = self.batch.meta
        # No adapter of this step targets this projection (q,k,v,o adapters in the MLP): skip it outright.
        if meta is None or meta.no_lora or not any(meta.run_ranks(self.slot_ranks)):
            return out
        y = lora_shrink(x, self.lora_a, meta, self.slot_ranks)
        lora_expand(y, self.lora_b, self.offsets, meta, self.slot_ranks, self.batch.scale, out)
        return out


class LoRAModel:
    """The base transformer with LoRA layers swapped in, and slot-level operations over all of them."""

    def __init__(self, model: Transformer, num_slots: int, max_rank: int):
        self.model = model
        self.num_slots = num_slots
        self.max_rank = max_rank
        device = model.embed_tokens.weight.device
        self.targets = lora_targets(model.config)
        self.batch = LoRABatch(num_slots, [t.path for t in self.targets], device)
        dtype, layers = model.embed_tokens.weight.dtype, model.config.num_layers
        # Per projection, every layer's slots in one tensor (slot 0 stays zero: it is "no adapter").
        self.slot_a: dict[str, torch.Tensor] = {}
        self.slot_b: dict[str, torch.Tensor] = {}
        for t in self.targets:
            self.slot_a[t.path] = torch.zeros(layers, len(t.modules), num_slots + 1, max_rank, t.in_features, dtype=dtype, device=device)
            self.slot_b[t.path] = torch.zeros(layers, num_slots + 1, t.out_features, max_rank, dtype=dtype, device=device)
        self.layers: list[dict[str, LoRALinear]] = []
        for index, layer in enumerate(model.layers):
            wrapped = {}
            for target in self.targets:
                parent_name, _, attr = target.path.rpartition(".")
                parent = layer.get_submodule(parent_name)
                lora = LoRALinear(getattr(parent, attr), target, self.batch, self.slot_a[target.path][index], self.slot_b[target.path][index])
                setattr(parent, attr, lora)
                wrapped[target.path] = lora
            self.layers.append(wrapped)

    def refusal(self, adapter: PackedAdapter) -> str | None:
        """Why `adapter` cannot go into a slot (None: it fits): its rank, its scale as the slots' float32,
        and every tensor's shape against the slot tensors of its projection."""
        if not 1 <= adapter.rank <= self.max_rank:
            return f"its rank {adapter.rank} is outside the slots' 1..{self.max_rank}"
        if not (math.isfinite(adapter.scale) and abs(adapter.scale) <= _FLOAT32_MAX):
            return f"its scale {adapter.scale:g} (lora_alpha over r, or sqrt(r) with rsLoRA) is not a finite float32"
        for path, (a, b) in adapter.targets.items():
            if path not in self.slot_a:
                return f"it targets {path}, which is not a LoRA projection of this base ({sorted(self.slot_a)})"
            layers, slices, _, _, d_in = self.slot_a[path].shape  # [layers, slices, slots + 1, max_rank, in]
            d_out = self.slot_b[path].shape[2]  # [layers, slots + 1, out, max_rank]
            want_a, want_b = (layers, slices, adapter.rank, d_in), (layers, d_out, adapter.rank)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                return f"its {path} weights have shapes {list(a.shape)} and {list(b.shape)}; this base needs {list(want_a)} and {list(want_b)}"
        return None

    def set_slot(self, slot: int, adapter: PackedAdapter) -> None:
        """Fill a slot with an adapter; ValueError (before anything is copied) when it does not fit (`refusal`).
        Rows beyond its rank that a previous occupant used are zeroed: the CPU kernels compute up to the
        largest rank of a run of slots and must read zeros there."""
        assert 1 <= slot <= self.num_slots, slot
        reason = self.refusal(adapter)
        if reason is not None:
            raise ValueError(reason)
        r = adapter.rank
        for path, ranks in self.batch.ranks.items():
            previous = int(ranks[slot])
            slot_a, slot_b = self.slot_a[path][:, :, slot], self.slot_b[path][:, slot]
            pair = adapter.targets.get(path)
            kept = r if pair is not None else 0  # untargeted projections keep rank 0: the ops skip them
            if pair is not None:
                slot_a[:, :, :r].copy_(pair[0])
                slot_b[:, :, :r].copy_(pair[1])
            if previous > kept:
                slot_a[:, :, kept:previous].zero_()
                slot_b[:, :, kept:previous].zero_()
            ranks[slot] = kept
        self.batch.scale[slot] = adapter.scale

    def clear_slot(self, slot: int) -> None:
        for path, ranks in self.batch.ranks.items():
            previous = int(ranks[slot])
            if previous:
                self.slot_a[path][:, :, slot, :previous].zero_()
                self.slot_b[path][:, slot, :, :previous].zero_()
            ranks[slot] = 0
        self.batch.scale[slot] = 0.0


def apply_lora(model: Transformer, num_slots: int, max_rank: int) -> LoRAModel:
    return LoRAModel(model, num_slots, max_rank)
