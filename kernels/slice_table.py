"""Per-slice operand tables for the Triton kernels.

A multi-slice op (fused qkv, gate/up, and the backward passes) hands each kernel one base pointer and a
small int64 table with, per slice, an element offset from that base plus the slice's column window.
The slices are views of one tensor, so they share strides; tables are cached by value, so a step
reuses the same device tensors in every layer instead of copying host lists to the device per call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def view_offsets(views: Sequence[Tensor]) -> list[int]:
    """Element offsets of `views` from the first one; all must be equally strided views of one storage."""
    base = views[0]
    for view in views[1:]:
        assert view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr(), (
            "per-slice operands must be views of one tensor"
        )
        assert view.stride() == base.stride(), f"slice strides differ: {view.stride()} vs {base.stride()}"
    return [view.storage_offset() - base.storage_offset() for view in views]


def slice_table(device: torch.device, rows: Sequence[Sequence[int]]) -> Tensor:
    """[num_slices, width] int64 table on `device`, shared by every call with the same values."""
    return _cached_table(device, tuple(tuple(row) for row in rows))


@functools.lru_cache(maxsize=1024)
def _cached_table(device: torch.device, rows: tuple[tuple[int, ...], ...]) -> Tensor:
    return torch.tensor(rows, dtype=torch.int64, device=device)
