"""Attention over the paged KV cache for one engine step (implements mint.models.attention.Attention).

A step's tokens come from many sequences: decodes (one new token, attending to the whole cached context)
and prefill chunks (several new tokens). Each layer first writes the step's keys and values into their
cache slots, then attends: all single-token rows at once, as one batched SDPA over their contexts gathered
from the cache and padded to the longest; each prefill chunk on its own, causally.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from services.engine.kv_cache import KVCache


@dataclasses.dataclass(frozen=True, slots=True)
class SeqSpan:
    """One sequence's rows in a step: tokens q_start..q_start+q_len-1, after which its cache holds
    ctx_len tokens (the first ctx_len - q_len were cached by earlier steps)."""

    q_start: int
    q_len: int
    ctx_len: int
    blocks: list[int]


class PagedAttention:
    def __init__(self, cache: KVCache, spans: list[SeqSpan]):
        self.cache = cache
        device = cache.k.device
        size = cache.block_size
        slots: list[int] = []
        for span in spans:
            blocks = span.blocks
            slots += [blocks[p // size] * size + p % size for p in range(span.ctx_len - span.q_len, span.ctx_len)]
        self.slot_mapping = torch.tensor(slots, dtype=torch.long, device=device)
        singles = [s for s in spans if s.q_len == 1]
        self.chunks = [s for s in spans if s.q_len > 1]
        self.single_rows = None
        if singles:
            rows = [s.q_start for s in singles]
            self.all_single = rows == list(range(len(spans))) and not self.chunks
            self.single_rows = torch.tensor(rows, dtype=torch.long, device=device)
            # Each row's context as cache slots, padded to the longest: block table -> slot indices.
            longest = max(s.ctx_len for s in singles)
            width = -(-longest // size)
            table = torch.tensor([s.blocks[:width] + [0] * (width - len(s.blocks[:width])) for s in singles], dtype=torch.long)
            positions = torch.arange(longest)
            self.single_index = (table[:, positions // size] * size + positions % size).to(device)
            lengths = torch.tensor([s.ctx_len for s in singles])
            self.single_mask = (positions < lengths.unsqueeze(1)).view(len(singles), 1, 1, longest).to(device)
        # Fresh prefills (nothing cached before them) of equal length attend as one batched call; one call
        # per sequence costs far more than the attention itself at these sizes.
        by_length: dict[int, list[SeqSpan]] = {}
        for span in self.chunks:
            if span.ctx_len == span.q_len:
                by_length.setdefault(span.q_len, []).append(span)
        self.fresh_groups: list[tuple[int, int, slice | torch.Tensor]] = []
        for length, group in by_length.items():
            rows = [r for span in group for r in range(span.q_start, span.q_start + length)]
            contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
            where = slice(rows[0], rows[0] + len(rows)) if contiguous else torch.tensor(rows, dtype=torch.long, device=device)
            self.fresh_groups.append((len(group), length, where))
        self.continued = [s for s in self.chunks if s.ctx_len > s.q_len]
        self.chunk_context = {
            id(s): torch.tensor(cache.slots(s.blocks, 0, s.ctx_len), dtype=torch.long, device=device) for s in self.continued
        }

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = self.cache.k[layer_idx], self.cache.v[layer_idx]
        k_cache.index_copy_(0, self.slot_mapping, k)
        v_cache.index_copy_(0, self.slot_mapping, v)
        gqa = q.shape[1] != k.shape[1]
        out = torch.empty_like(q)
        if self.single_rows is not None:
            batch, longest = self.single_index.shape
            qs = q if self.all_single else q.index_select(0, self.single_rows)
            # index_select copies whole rows; advanced indexing is ~5x slower for this gather.
            flat = self.single_index.view(-1)
            keys = k_cache.index_select(0, flat).view(batch, longest, *k.shape[1:]).transpose(1, 2)
            values = v_cache.index_select(0, flat).view(batch, longest, *v.shape[1:]).transpose(1, 2)
            attended = F.scaled_dot_product_attention(qs.unsqueeze(2), keys, values, attn_mask=self.single_mask, enable_gqa=gqa)
            attended = attended.squeeze(2)
            if self.all_single:
                return attended
            out.index_copy_(0, self.single_rows, attended)
        for count, length, where in self.fresh_groups:
            qs, ks, vs = (_as_batch(x, where, count, length) for x in (q, k, v))
            attended = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
            attended = attended.transpose(1, 2).reshape(count * length, *q.shape[1:])
            if isinstance(where, slice):
                out[where] = attended
            else:
                out.index_copy_(0, where, attended)
        for span in self.continued:  # a prefill continuing after cached tokens: attend to them too
            rows = slice(span.q_start, span.q_start + span.q_len)
            context = self.chunk_context[id(span)]
            offset = span.ctx_len - span.q_len
            causal = torch.arange(span.ctx_len, device=q.device) <= (torch.arange(span.q_len, device=q.device) + offset).unsqueeze(1)
            attended = F.scaled_dot_product_attention(
                q[rows].transpose(0, 1), k_cache.index_select(0, context).transpose(0, 1),
                v_cache.index_select(0, context).transpose(0, 1), attn_mask=causal, enable_gqa=gqa,
            )
            out[rows] = attended.transpose(0, 1)
        return out


def _as_batch(x: torch.Tensor, where: slice | torch.Tensor, count: int, length: int) -> torch.Tensor:
    """Rows `where` of x [T, heads, dim] as [count, heads, length, dim]."""
    rows = x[where] if isinstance(where, slice) else x.index_select(0, where)
    return rows.view(count, length, *x.shape[1:]).transpose(1, 2)
