"""The attention contract between the model and whoever owns the keys and values.

The transformer computes q, k and v for a flattened ragged batch and hands them to an `Attention` object
together with the layer index; that object decides where keys and values live. The engine brings a paged
KV cache; `VarlenAttention` here keeps nothing and serves training, scoring and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from mint.errors import invalid


class Attention(Protocol):
    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention within each sequence of the batch.

        q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim] (rope already applied to q and k);
        returns [T, num_heads, head_dim]. Grouped-query attention is the implementation's job.
        """
        ...


class VarlenAttention:
    """Causal attention over sequences packed back to back, with no cache: token t of a sequence attends
    to tokens 0..t of the same sequence only."""

    def __init__(self, seq_lens: Sequence[int]):
        if not seq_lens or any(n <= 0 for n in seq_lens):
            raise invalid(f"seq_lens must be a non-empty list of positive lengths, got {list(seq_lens)}")
        self.seq_lens = list(seq_lens)
        self.num_tokens = sum(self.seq_lens)
        # Equal lengths (decode steps, fixed-length training batches) fold into one batched call.
        self._uniform = len(set(self.seq_lens)) == 1

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        num_tokens, num_heads, head_dim = q.shape
        if num_tokens != self.num_tokens:
            raise invalid(f"got {num_tokens} tokens but seq_lens {self.seq_lens} add up to {self.num_tokens}")
        gqa = num_heads != k.shape[1]
        if self._uniform:
            batch, length = len(self.seq_lens), self.seq_lens[0]
            out = F.scaled_dot_product_attention(
                q.view(batch, length, num_heads, head_dim).transpose(1, 2),
                k.view(batch, length, -1, head_dim).transpose(1, 2),
                v.view(batch, length, -1, head_dim).transpose(1, 2),
                is_causal=length > 1,
                enable_gqa=gqa,
            )
            return out.transpose(1, 2).reshape(num_tokens, num_heads, head_dim)
        # Ragged: one call per sequence costs tens of microseconds each, far less than padding every
        # sequence to the longest and attending over the padding.
        outs = [
            F.scaled_dot_product_attention(
                qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1), is_causal=True, enable_gqa=gqa
            ).transpose(0, 1)
            for qs, ks, vs in zip(
                q.split(self.seq_lens), k.split(self.seq_lens), v.split(self.seq_lens), strict=True
            )
        ]
        return torch.cat(outs)
