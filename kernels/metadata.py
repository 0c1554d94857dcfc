"""Per-step batch metadata for the LoRA ops: tokens grouped by adapter slot, built once per step.

Every LoRA layer of a step reads the same `LoRAMeta` (30 layers x 7 modules for SmolLM2), so everything
that needs the host (one device-to-host copy) happens in `build`, and no op syncs afterwards.

Segments are keyed by an integer `key > 0`. For dense layers the key is the adapter slot. For MoE
expert LoRA the key is `slot * num_experts + expert` (see `MoELoRAMeta`), so the per-(slot, expert)
weights `[num_slots, num_experts, ...]` flatten, as a view, into `[num_slots * num_experts, ...]`
indexed by key; `keys_per_slot` turns a key back into its slot for the scale and rank lookups.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class SegmentRun:
    """Active keys, adjacent in sorted order, that all hold `tokens_per_key` tokens: their tokens are adjacent
    in sorted order, so the CPU path computes the whole run as one `bmm`.

    `keys` is empty when the keys are consecutive, `first_key .. first_key + num_keys - 1`: their weights are
    adjacent in the slot tensor and the bmm reads a view of it. Otherwise (slots with idle ones between them,
    as a decode batch over a large slot pool has) `keys` lists them, and the CPU path gathers their weights
    when they are small or splits the run into its consecutive `pieces` when copying would cost more.
    """

    token_start: int  # offset into sorted_token_ids
    tokens_per_key: int
    first_key: int
    num_keys: int
    keys: tuple[int, ...] = ()

    @property
    def token_end(self) -> int:
        return self.token_start + self.tokens_per_key * self.num_keys

    @property
    def key_list(self) -> Sequence[int]:
        return self.keys or range(self.first_key, self.first_key + self.num_keys)

    def pieces(self) -> list[SegmentRun]:
        """The run as runs of consecutive keys (itself when its keys are consecutive)."""
        if not self.keys:
            return [self]
        pieces: list[SegmentRun] = []
        for i, key in enumerate(self.keys):
            last = pieces[-1] if pieces else None
            if last is not None and last.first_key + last.num_keys == key:
                pieces[-1] = SegmentRun(last.token_start, self.tokens_per_key, last.first_key, last.num_keys + 1)
            else:
                pieces.append(SegmentRun(self.token_start + i * self.tokens_per_key, self.tokens_per_key, key, 1))
        return pieces


@dataclass(slots=True)
class LoRAMeta:
    """Which tokens use which adapter slot in this step; slot 0 means no adapter.

    Device tensors live on `token_slots.device`; the host fields are plain Python values read by the
    CPU path and by the Triton launchers (grid sizes) without a sync.
    """

    token_slots: Tensor  # [T] int64, the key of each token (its slot for dense layers)
    sorted_token_ids: Tensor  # [T_lora] int64, tokens with key > 0, stably sorted by key
    sorted_slots: Tensor  # [T_lora] int64, the slot of each sorted token (per-token scale lookup)
    active_slots: Tensor  # [S] int64, distinct keys > 0, ascending
    slot_counts: Tensor  # [S] int64, tokens per active key
    slot_starts: Tensor  # [S] int64, offset of each active key's tokens in sorted_token_ids
    no_lora: bool  # no token uses an adapter: every op returns at once
    num_tokens: int  # T
    num_active: int  # S
    max_slot_tokens: int  # largest entry of slot_counts (0 when no_lora)
    in_slot_order: bool  # every token has an adapter and tokens are already sorted: no gather needed
    runs: tuple[SegmentRun, ...]  # the active keys, grouped for the CPU path
    keys_per_slot: int = 1  # 1 for dense layers; num_experts for MoE rows
    _run_ranks: dict[int, tuple[Tensor, int, tuple[int, ...]]] = field(default_factory=dict, repr=False)
    _key_index: dict[int, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, token_slots: Tensor, slot_ranks: Tensor | None = None) -> LoRAMeta:
        """Group the step's tokens by slot (token_slots: [T] int). One device-to-host copy.

        `slot_ranks` ([num_slots] int), when given, precomputes the per-run ranks the CPU path uses.
        """
        return cls.from_keys(token_slots, keys_per_slot=1, slot_ranks=slot_ranks)

    @classmethod
    def from_keys(cls, keys: Tensor, *, keys_per_slot: int, slot_ranks: Tensor | None = None) -> LoRAMeta:
        """Group rows by segment key (keys: [R] int, 0 = no adapter; slot = key // keys_per_slot)."""
        assert keys.dim() == 1, f"keys must be 1-D [T], got shape {tuple(keys.shape)}"
        assert not keys.is_floating_point(), f"keys must be integers, got {keys.dtype}"
        keys = keys.to(torch.int64)
        sorted_keys, order = torch.sort(keys, stable=True)
        distinct, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        # One transfer carries everything the host needs; keys equal to their sorted copy means the
        # tokens already arrive grouped by slot (the engine can order sequences that way).
        already_sorted = (sorted_keys == keys).all().to(torch.int64).view(1)
        host = torch.cat([distinct, counts, already_sorted]).tolist()
        num_distinct = distinct.numel()
        host_keys, host_counts = host[:num_distinct], host[num_distinct:-1]

        assert not host_keys or host_keys[0] >= 0, f"slots must be >= 0, got {host_keys[0]}"
        unrouted = host_counts[0] if host_keys and host_keys[0] == 0 else 0
        skip = 1 if unrouted else 0
        host_keys, host_counts = host_keys[skip:], host_counts[skip:]
        active, slot_counts = distinct[skip:], counts[skip:]
        host_starts = [0, *itertools.accumulate(host_counts)][:-1]
        meta = cls(
            token_slots=keys,
            sorted_token_ids=order[unrouted:],
            sorted_slots=sorted_keys[unrouted:] // keys_per_slot,
            active_slots=active,
            slot_counts=slot_counts,
            slot_starts=torch.cumsum(slot_counts, 0) - slot_counts,
            no_lora=not host_keys,
            num_tokens=keys.numel(),
            num_active=len(host_keys),
            max_slot_tokens=max(host_counts, default=0),
            in_slot_order=bool(host[-1]) and unrouted == 0 and keys.numel() > 0,
            runs=_segment_runs(host_keys, host_counts, host_starts),
            keys_per_slot=keys_per_slot,
        )
        if slot_ranks is not None:
            meta.run_ranks(slot_ranks)
        return meta

    def key_index(self, run: SegmentRun) -> Tensor:
        """A run's keys as an index tensor (for gathering its weights), made once per step."""
        index = self._key_index.get(run.token_start)
        if index is None:
            index = self._key_index[run.token_start] = torch.tensor(run.key_list, dtype=torch.int64, device=self.token_slots.device)
        return index

    def run_ranks(self, slot_ranks: Tensor) -> tuple[int, ...]:
        """The largest slot rank within each run.

        Cached per ranks tensor and its version counter: the engine passes the same tensor to every
        layer, so only the first call of a step reads it on the host.
        """
        cached = self._run_ranks.get(id(slot_ranks))
        if cached is not None and cached[0] is slot_ranks and cached[1] == slot_ranks._version:
            return cached[2]
        ranks = slot_ranks.tolist()
        per_run = tuple(
            max(
                ranks[key // self.keys_per_slot] for key in run.key_list
            )
            for run in self.runs
        )
        self._run_ranks[id(slot_ranks)] = (slot_ranks, slot_ranks._version, per_run)
        return per_run


def _segment_runs(keys: list[int], counts: list[int], starts: list[int]) -> tuple[SegmentRun, ...]:
    groups: list[tuple[int, int, list[int]]] = []  # (token_start, tokens_per_key, keys)
    for key, count, start in zip(keys, counts, starts, strict=True):
        if groups and groups[-1][1] == count:
            groups[-1][2].append(key)
        else:
            groups.append((start, count, [key]))
    return tuple(
        SegmentRun(start, count, group[0], len(group), () if group[-1] - group[0] == len(group) - 1 else tuple(group))
        for start, count, group in groups
    )


@dataclass(slots=True)
class MoELoRAMeta:
    """Expert LoRA routing: each token goes to `top_k` experts, giving `T * top_k` rows.

    Row `t * top_k + i` is token t sent to expert `topk_ids[t, i]`; its segment key is
    `slot * num_experts + expert` (0 when the token has no adapter). Ops on expert outputs read and
    write rows; an op on the shared layer input reads token `row // top_k` (`sorted_source_tokens`).
    """

    rows: LoRAMeta  # segments over the T * top_k rows, keys_per_slot = num_experts
    sorted_source_tokens: Tensor  # [R_lora] int64, the token each sorted row reads its input from
    num_tokens: int  # T
    top_k: int
    num_experts: int

    @classmethod
    def build(
        cls,
        token_slots: Tensor,  # [T] int, 0 = no adapter
        topk_ids: Tensor,  # [T, top_k] int, expert of each routed copy
        num_experts: int,
        slot_ranks: Tensor | None = None,  # [num_slots] int
    ) -> MoELoRAMeta:
        assert topk_ids.dim() == 2 and topk_ids.shape[0] == token_slots.shape[0], (
            f"topk_ids must be [T, top_k] with T = {token_slots.shape[0]}, got {tuple(topk_ids.shape)}"
        )
        top_k = topk_ids.shape[1]
        row_slots = token_slots.to(torch.int64).repeat_interleave(top_k)
        keys = torch.where(row_slots > 0, row_slots * num_experts + topk_ids.reshape(-1), 0)
        rows = LoRAMeta.from_keys(keys, keys_per_slot=num_experts, slot_ranks=slot_ranks)
        return cls(
            rows=rows,
            sorted_source_tokens=rows.sorted_token_ids // top_k,
            num_tokens=token_slots.shape[0],
            top_k=top_k,
            num_experts=num_experts,
        )

    @property
    def no_lora(self) -> bool:
        return self.rows.no_lora
