"""A cold load, from an adapter spec to a `PackedAdapter` ready for a slot copy: the blob into the disk cache
(a hard link to a local store's verified file, else fetched and verified), its config and bytes checked
against this base and these slots, parsed and packed in the engine's dtype.

Whatever the bytes and config hold, a fault is a `LoadFailed` with the reason (a blob may come straight
from a store that no catalog checked, or disagree with the config it was published with). The loader pool
(load_pool.py) runs loads; what becomes of their results the residency decides (residency.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mint.adapters import AdapterConfig, BaseShapes, Limits, load_weights, validate_adapter
from mint.adapters.packing import PackedAdapter, pack
from mint.adapters.spec import AdapterSpec
from mint.errors import Code, MintError
from mint.models.config import ModelConfig
from mint.names import check_sha256
from services.engine.failures import LoadFailed
from services.engine.lora import LoRAModel
from services.engine.sources import AdapterSource
from services.engine.tiers import DiskCache


class AdapterLoader:
    """Used by every loader thread at once: it holds no state of its own beyond the disk cache's."""

    def __init__(self, lora: LoRAModel, model_config: ModelConfig, disk: DiskCache, source: AdapterSource):
        self.lora = lora
        self.model_config = model_config
        self.disk = disk
        self.source = source
        self.dtype = lora.model.embed_tokens.weight.dtype
        self._base = BaseShapes(model_config.num_layers, model_config.module_shapes())
        self._limits = Limits(max_rank=lora.max_rank)

    def packed(self, spec: AdapterSpec) -> PackedAdapter:
        try:
            check_sha256(spec.sha256)  # before it names a file in the disk cache
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, f"it names no blob: {err.message}") from None
        try:
            config = spec.config
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, f"its config is invalid: {err.message}") from None
        self.disk.acquire(spec.sha256)  # no other load's file evicts this one while it is read
        try:
            packed = self._read(spec, config)
        finally:
            self.disk.release(spec.sha256)
        refusal = self.lora.refusal(packed)
        if refusal is None:
            refusal = _nonfinite(packed)
        if refusal is not None:
            raise LoadFailed(Code.FAILED_PRECONDITION, refusal)
        return packed

    def _read(self, spec: AdapterSpec, config: AdapterConfig) -> PackedAdapter:
        try:
            path = self._on_disk(spec.sha256)
        except MintError as err:
            raise LoadFailed(err.code, f"its blob could not be fetched: {err.message}") from None
        except OSError as err:
            raise LoadFailed(Code.UNAVAILABLE, f"its blob could not be fetched: {err}") from None
        try:
            validate_adapter(config, path, self._base, self._limits)
            return pack(load_weights(config, path, self.dtype), self.model_config, self.dtype)
        except MintError as err:
            raise LoadFailed(Code.FAILED_PRECONDITION, err.message) from None
        except OSError as err:
            raise LoadFailed(Code.UNAVAILABLE, f"its cached blob could not be read: {err}") from None
        except MemoryError:
            raise LoadFailed(Code.RESOURCE_EXHAUSTED, "the engine ran out of host memory loading it") from None

    def _on_disk(self, sha256: str) -> Path:
        if self.disk.touch(sha256):
            return self.disk.path(sha256)
        local = self.source.local_path(sha256)
        if local is not None and (path := self.disk.link(sha256, local)) is not None:
            return path
        return self.disk.write(sha256, self.source.fetch(sha256))


def _nonfinite(packed: PackedAdapter) -> str | None:
    """Why the packed weights cannot be served: a NaN or Inf, which the file may hold or the conversion to
    the engine's dtype may make (an F32 value past float16's range). Min and max propagate NaN, and an Inf
    is one of them, so one aminmax per tensor decides."""
    for path, tensors in packed.targets.items():
        for which, tensor in zip("AB", tensors, strict=True):
            if tensor.numel() and not bool(torch.stack(torch.aminmax(tensor)).isfinite().all()):
                return f"its {path} lora_{which} weights hold NaN or Inf in {str(tensor.dtype).removeprefix('torch.')}"
    return None
