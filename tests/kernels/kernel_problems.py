"""Random LoRA problems and the ops' definitions computed token by token, shared by the kernel tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import LoRAMeta

# Where the Triton kernels run: the GPU when there is one, else the CPU under TRITON_INTERPRET=1.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (atol, rtol) per compute dtype, against the reference run on fp32 (fp64 for fp64) copies.
TOLERANCE = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (6e-2, 6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol)


@dataclass
class DenseProblem:
    """A random step: token slots, padded slot tensors (zero beyond each slot's rank), inputs."""

    slots: torch.Tensor  # [T]
    ranks: torch.Tensor  # [num_slots]
    scale: torch.Tensor  # [num_slots] fp32
    x: torch.Tensor  # [T, in]
    lora_a: torch.Tensor  # [num_slices, num_slots, r_max, in]
    lora_b: torch.Tensor  # [num_slots, total_out, r_max]
    offsets: tuple[int, ...]
    meta: LoRAMeta

    def cast(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh copies of (x, lora_a, lora_b) in `dtype`, safe to mark as requiring grad."""
        return tuple(t.to(dtype, copy=True) for t in (self.x, self.lora_a, self.lora_b))


def make_dense_problem(
    num_tokens: int,
    num_adapters: int,
    ranks: list[int],
    slice_widths: tuple[int, ...],
    *,
    in_features: int = 48,
    with_base_tokens: bool = True,
    sorted_tokens: bool = False,
    gaps: bool = False,
    padding: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
) -> DenseProblem:
    """`num_adapters` adapters in slots 1..num_adapters with `ranks` (cycled); r_max = max(ranks).

    gaps: the adapters sit in odd slots 1, 3, 5, ... instead, with unused slots (holding garbage) between
    them, as in an engine's large slot pool. Every adapter gets at least one token when num_tokens allows;
    with_base_tokens adds slot-0 tokens. Weights beyond each slot's rank hold `padding` (zero by the slot
    manager's convention). Generated on the CPU (the same values everywhere), then moved to `device`.
    """
    gen = torch.Generator().manual_seed(seed)
    adapter_slots = torch.arange(num_adapters) * (2 if gaps else 1) + 1
    num_slots = int(adapter_slots[-1]) + 2  # the last slot holds an adapter no token uses
    r_max = max(ranks)
    slot_ranks = torch.zeros(num_slots, dtype=torch.int64)
    for i, slot in enumerate(adapter_slots.tolist()):
        slot_ranks[slot] = ranks[i % len(ranks)]
    choices = torch.cat([torch.zeros(1, dtype=torch.int64), adapter_slots]) if with_base_tokens else adapter_slots
    slots = torch.cat(
        [
            adapter_slots,
            choices[torch.randint(len(choices), (max(num_tokens - num_adapters, 0),), generator=gen)],
        ]
    )[:num_tokens]
    if sorted_tokens:
        slots = slots.sort().values
    else:
        slots = slots[torch.randperm(num_tokens, generator=gen)]
    offsets = (0, *torch.tensor(slice_widths).cumsum(0).tolist())
    lora_a = torch.randn(len(slice_widths), num_slots, r_max, in_features, generator=gen) / in_features**0.5
    lora_b = torch.randn(num_slots, offsets[-1], r_max, generator=gen) / r_max**0.5
    for slot in adapter_slots.tolist():
        lora_a[:, slot, slot_ranks[slot] :] = padding
        lora_b[slot, :, slot_ranks[slot] :] = padding
    # Slot 0 and the unused slots hold garbage: no op may read them.
    unused = sorted(set(range(num_slots)) - set(adapter_slots.tolist()))
    for slot in unused:
        lora_a[:, slot] = torch.randn(lora_a[:, slot].shape, generator=gen)
        lora_b[slot] = torch.randn(lora_b[slot].shape, generator=gen)
        slot_ranks[slot] = r_max
    slots, slot_ranks = slots.to(device), slot_ranks.to(device)
    return DenseProblem(
        slots=slots,
        ranks=slot_ranks,
        scale=(torch.rand(num_slots, generator=gen) + 0.5).to(device),
        x=torch.randn(num_tokens, in_features, generator=gen).to(device),
        lora_a=lora_a.to(device),
        lora_b=lora_b.to(device),
        offsets=offsets,
        meta=LoRAMeta.build(slots, slot_ranks),
    )


def naive_delta(
    problem: DenseProblem, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor
) -> torch.Tensor:
    """The op's definition, one token and one slice at a time: the oracle for the reference."""
    rows = []
    for t, slot in enumerate(problem.slots.tolist()):
        rank = int(problem.ranks[slot])
        row = torch.zeros(problem.offsets[-1], dtype=x.dtype, device=x.device)
        if slot > 0:
            for s in range(lora_a.shape[0]):
                lo, hi = problem.offsets[s], problem.offsets[s + 1]
                y = x[t] @ lora_a[s, slot, :rank].T
                row[lo:hi] = problem.scale[slot].to(x.dtype) * (y @ lora_b[slot, lo:hi, :rank].T)
        rows.append(row)
    return torch.stack(rows)


def naive_shrink(problem: DenseProblem, x: torch.Tensor, lora_a: torch.Tensor) -> torch.Tensor:
    y = torch.zeros(lora_a.shape[0], x.shape[0], lora_a.shape[2], dtype=x.dtype, device=x.device)
    for t, slot in enumerate(problem.slots.tolist()):
        rank = int(problem.ranks[slot])
        if slot > 0:
            for s in range(lora_a.shape[0]):
                y[s, t, :rank] = x[t] @ lora_a[s, slot, :rank].T
    return y
