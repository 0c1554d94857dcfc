"""LoRA adapters in PEFT's on-disk format: tensor names, validation against a base, reading and writing.

An adapter is `adapter_config.json` + `adapter_model.safetensors` with tensors named
`base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`, A of shape [r, in] and
B of shape [out, r]. Validation runs before anything is stored and never unpickles: the header is
checked first (size, dtypes, names, shapes, offsets), then the values (finite).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from mint.adapters.config import ATTN_MODULES, LORA_MODULES, AdapterConfig
from mint.adapters.safetensors_file import (
    DEFAULT_MAX_HEADER_BYTES,
    PICKLE_REFUSAL,
    first_nonfinite,
    map_tensors,
    read_header,
    serialize,
    serialize_chunks,
)
from mint.errors import invalid

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ALLOWED_DTYPES = frozenset({"F32", "F16", "BF16"})
# Matched whole and ASCII-only: `\d` would take other scripts' digits as layer numbers, `$` a final newline.
_NAME = re.compile(r"base_model\.model\.model\.layers\.(0|[1-9][0-9]{0,5})\.(self_attn|mlp)\.([a-z_]+)\.lora_(A|B)\.weight", re.ASCII)


def tensor_name(layer: int, module: str, which: str) -> str:
    parent = "self_attn" if module in ATTN_MODULES else "mlp"
    return f"base_model.model.model.layers.{layer}.{parent}.{module}.lora_{which}.weight"


@dataclasses.dataclass(frozen=True, slots=True)
class BaseShapes:
    """What an adapter is checked against: per-layer module shapes (in, out) of a base model."""

    num_layers: int
    module_shapes: dict[str, tuple[int, int]]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_rank: int = 256
    max_bytes: int = 2 * 1024**3
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES


@dataclasses.dataclass(frozen=True, slots=True)
class ValidatedAdapter:
    config: AdapterConfig
    size_bytes: int
    num_tensors: int


@dataclasses.dataclass(slots=True)
class AdapterWeights:
    """An adapter in host memory: (layer, module) -> (A [r, in], B [out, r])."""

    config: AdapterConfig
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.tensors.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for (layer, module), (a, b) in sorted(self.tensors.items()):
            out[tensor_name(layer, module, "A")] = a.contiguous()
            out[tensor_name(layer, module, "B")] = b.contiguous()
        return out

    def to_safetensors(self) -> bytes:
        return serialize(self.state_dict())

    def safetensors_chunks(self) -> Iterator[bytes | memoryview]:
        """The same file as `to_safetensors`, as chunks viewing the tensors (for a streaming writer)."""
        return serialize_chunks(self.state_dict())

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True))
        (path / WEIGHTS_NAME).write_bytes(self.to_safetensors())
        return path


def validate_adapter(config: AdapterConfig, weights_path: str | os.PathLike, base: BaseShapes, limits: Limits = Limits()) -> ValidatedAdapter:
    """Check a PEFT safetensors file against its config and a base model; INVALID_ARGUMENT on any fault."""
    if config.r > limits.max_rank:
        raise invalid(f"adapter rank {config.r} exceeds the limit of {limits.max_rank}")
    missing_modules = [m for m in config.target_modules if m not in base.module_shapes]
    if missing_modules:
        raise invalid(f"target_modules {missing_modules} do not exist in the base model (it has {sorted(base.module_shapes)})")
    size = os.path.getsize(weights_path)
    if size > limits.max_bytes:
        raise invalid(f"adapter is {size} bytes; the limit is {limits.max_bytes}")
    with open(weights_path, "rb") as f:
        header = read_header(f, size, max_header_bytes=limits.max_header_bytes)
    seen: set[tuple[int, str, str]] = set()
    for entry in header.tensors.values():
        layer, module, which = _parse_name(entry.name, base, config)
        if entry.dtype not in ALLOWED_DTYPES:
            raise invalid(f"tensor {entry.name!r} has dtype {entry.dtype}; allowed: {sorted(ALLOWED_DTYPES)}")
        d_in, d_out = base.module_shapes[module]
        expected = (config.r, d_in) if which == "A" else (d_out, config.r)
        if entry.shape != expected:
            raise invalid(f"tensor {entry.name!r} has shape {list(entry.shape)}; expected {list(expected)} for r={config.r}")
        seen.add((layer, module, which))
    wanted = {(layer, m, w) for layer in range(base.num_layers) for m in config.target_modules for w in "AB"}
    missing = sorted(wanted - seen)
    if missing:
        shown = ", ".join(tensor_name(*key) for key in missing[:3])
        raise invalid(f"adapter is missing {len(missing)} tensors for its target_modules, e.g. {shown}")
    bad = first_nonfinite(weights_path, header)
    if bad is not None:
        raise invalid(f"tensor {bad!r} contains NaN or Inf")
    return ValidatedAdapter(config=config, size_bytes=size, num_tensors=len(header.tensors))


def _parse_name(name: str, base: BaseShapes, config: AdapterConfig) -> tuple[int, str, str]:
    match = _NAME.fullmatch(name)
    if match is None:
        raise invalid(f"tensor name {name[:200]!r} is not a PEFT LoRA weight (base_model.model.model.layers.N.<module>.lora_A|B.weight)")
    layer, parent, module, which = int(match[1]), match[2], match[3], match[4]
    if module not in LORA_MODULES or parent != ("self_attn" if module in ATTN_MODULES else "mlp"):
        raise invalid(f"tensor {name!r} names unknown module {parent}.{module}; known: {list(LORA_MODULES)}")
    if module not in config.target_modules:
        raise invalid(f"tensor {name!r} is for {module}, which is not in target_modules {list(config.target_modules)}")
    if layer >= base.num_layers:
        raise invalid(f"tensor {name!r} is for layer {layer}; the base has {base.num_layers} layers")
    return layer, module, which


def load_weights(config: AdapterConfig, weights_path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> AdapterWeights:
    """An already-validated safetensors file as host tensors: zero-copy views over a memory map when the
    file already holds `dtype` (callers that keep them past the file's life should copy)."""
    with open(weights_path, "rb") as f:
        header = read_header(f, os.fstat(f.fileno()).st_size)
    tensors: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    for name, tensor in map_tensors(weights_path, header).items():
        match = _NAME.fullmatch(name)
        if match is None:
            raise invalid(f"unexpected tensor {name!r} in adapter")
        pair = tensors.setdefault((int(match[1]), match[3]), [None, None])
        pair[0 if match[4] == "A" else 1] = tensor.to(dtype)
    out: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    for key, (a, b) in tensors.items():
        if a is None or b is None:
            raise invalid(f"adapter has only one of lora_A/lora_B for layer {key[0]} {key[1]}")
        out[key] = (a, b)
    return AdapterWeights(config=config, tensors=out)


def read_adapter_dir(directory: str | os.PathLike) -> tuple[AdapterConfig, Path]:
    """(config, weights path) of a PEFT adapter directory."""
    path = Path(directory)
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file():
        raise invalid(f"{path} has no {CONFIG_NAME}")
    if not weights_path.is_file():
        if (path / "adapter_model.bin").exists():
            raise invalid(f"{path} holds adapter_model.bin and no {WEIGHTS_NAME}: {PICKLE_REFUSAL}")
        raise invalid(f"{path} has no {WEIGHTS_NAME}")
    return AdapterConfig.from_json(config_path.read_bytes()), weights_path
