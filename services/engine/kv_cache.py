"""The paged KV cache: fixed-size blocks of token slots, handed out by a reference-counted allocator.

Keys and values of layer l live in `k[l]`, `v[l]`: [num_blocks * block_size, num_kv_heads, head_dim],
so a token's slot is `block * block_size + offset`. Sequences own lists of blocks; samples of one prompt
share the prompt's blocks (reference counts) and copy a shared partial block before writing into it.
Memory is bounded by the block count, which comes from a byte budget.
"""

from __future__ import annotations

import torch

from mint.errors import Code, MintError


class BlockAllocator:
    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low block ids first
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise MintError(Code.RESOURCE_EXHAUSTED, "the KV cache has no free block")
        block = self._free.pop()
        self._refs[block] = 1
        return block

    def share(self, block: int) -> None:
        self._refs[block] += 1

    def refs(self, block: int) -> int:
        return self._refs[block]

    def free(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)


class KVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.allocator = BlockAllocator(num_blocks)

    @staticmethod
    def blocks_for_budget(budget_bytes: int, *, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        per_block = 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        return max(1, budget_bytes // per_block)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def copy_block(self, src: int, dst: int, num_tokens: int) -> None:
        """Copy the first `num_tokens` slots of block `src` into `dst`, in every layer (copy-on-write)."""
        s, d = src * self.block_size, dst * self.block_size
        self.k[:, d : d + num_tokens] = self.k[:, s : s + num_tokens]
        self.v[:, d : d + num_tokens] = self.v[:, s : s + num_tokens]

    def slots(self, blocks: list[int], start: int, end: int) -> list[int]:
        """Cache slots of token positions start..end-1 of a sequence stored in `blocks`."""
        size = self.block_size
        return [blocks[p // size] * size + p % size for p in range(start, end)]
