"""Hugging Face safetensors directories in and out of the packed `Transformer`.

On disk a base model is what transformers writes: `config.json` plus `model.safetensors`, or shards listed
by `model.safetensors.index.json`, with unpacked tensor names (`model.layers.3.self_attn.q_proj.weight`).
Loading maps those names onto the packed layout and concatenates q/k/v and gate/up rows; saving splits
them again. Only safetensors are read: pickle checkpoints (`.bin`, `.pt`) are refused, never opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mint.errors import Code, MintError, invalid, not_found
from mint.models.config import ModelConfig
from mint.models.transformer import Transformer, packed_slices

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Tensors some checkpoints carry that hold nothing the model needs (old Llama exports saved rope buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_HASH_CHUNK_BYTES = 16 * 1024**2


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Transformer:
    """Load a Hugging Face directory into a frozen (requires_grad=False), eval-mode `Transformer`."""
    path = Path(path)
    # The loaded model's config states the dtype it runs in, so save_model writes what it holds.
    config = dataclasses.replace(read_config(path), torch_dtype=_dtype_name(dtype))
    files = safetensors_files(path)
    with torch.device("meta"):
        model = Transformer(config)
    layout = hf_layout(model)

    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(file), framework="pt", device="cpu")) for file in files]
        where = {name: handle for handle in handles for name in handle.keys()}  # noqa: SIM118 (not a dict)
        expected = _names(layout)
        missing = sorted(expected - where.keys())
        if missing:
            raise invalid(f"{path} lacks {len(missing)} tensors the config implies, e.g. {missing[:5]}")
        redundant = {"lm_head.weight"} if config.tie_word_embeddings else set()
        unexpected = sorted(
            name for name in where.keys() - expected - redundant if not name.endswith(_IGNORED_SUFFIXES)
        )
        if unexpected:
            raise invalid(
                f"{path} holds {len(unexpected)} tensors a {config.architecture} model with this config does "
                f"not have, e.g. {unexpected[:5]}"
            )

        params = dict(model.named_parameters())
        state = {}
        for name, parts in layout.items():
            tensors = []
            for hf_name, rows in parts:
                tensor = where[hf_name].get_tensor(hf_name)
                want = (rows, *params[name].shape[1:])
                if tuple(tensor.shape) != want:
                    raise invalid(
                        f"{hf_name} in {path} has shape {tuple(tensor.shape)}; the config implies {want}"
                    )
                tensors.append(tensor)
            packed = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
            state[name] = packed.to(device=device, dtype=dtype)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    # assign=True replaced embed_tokens.weight with a new Parameter; point lm_head at it again.
    model.tie_weights()
    model.requires_grad_(False)
    return model.eval()


def save_model(
    model: Transformer, path: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> None:
    """Write `model` as a Hugging Face directory (unpacked names, config.json), sharded above max_shard_bytes."""
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for name, parts in hf_layout(model).items():
        pieces = params[name].detach().split([rows for _, rows in parts])
        tensors.update((hf_name, piece) for (hf_name, _), piece in zip(parts, pieces, strict=True))
    dtype = next(iter(params.values())).dtype
    config = dataclasses.replace(model.config, torch_dtype=_dtype_name(dtype))
    write_checkpoint(path, config, tensors, max_shard_bytes=max_shard_bytes)


def write_checkpoint(
    path: str | Path,
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Write Hugging Face-named tensors and config.json into `path`, which must not hold weights yet."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in path.glob("model*.safetensors*"))
    if existing:
        raise MintError(
            Code.ALREADY_EXISTS, f"{path} already holds model weights {existing[:3]}; use an empty directory"
        )

    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name, tensor in tensors.items():
        if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += tensor.nbytes

    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = SINGLE_FILE if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(
            {n: _owning_host_copy(tensors[n]) for n in names}, str(path / file), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(names, file))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
            "weight_map": weight_map,
        }
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (path / CONFIG_FILE).write_text(json.dumps(config.to_hf(), indent=2) + "\n")


def _owning_host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the host, copied only if it is a view into a larger storage (a slice of a packed weight),
    which safetensors refuses to write."""
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def weights_sha256(path: str | Path) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the same weights give the same
    digest however they are sharded or ordered inside the files."""
    entries = []
    for file in safetensors_files(Path(path)):
        header, data_start = _read_safetensors_header(file)
        for name, info in header.items():
            if name != "__metadata__":
                entries.append((name, info, file, data_start))
    digest = hashlib.sha256()
    for name, info, file, data_start in sorted(entries, key=lambda entry: entry[0]):
        digest.update(json.dumps([name, info["dtype"], info["shape"]]).encode() + b"\n")
        begin, end = info["data_offsets"]
        with open(file, "rb") as f:
            f.seek(data_start + begin)
            remaining = end - begin
            while remaining:
                chunk = f.read(min(remaining, _HASH_CHUNK_BYTES))
                if not chunk:
                    raise MintError(Code.DATA_LOSS, f"{file} ends inside tensor {name}")
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


def read_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face model directory."""
    path = Path(path)
    if not path.is_dir():
        raise not_found(f"model directory {path} does not exist")
    file = path / CONFIG_FILE
    if not file.is_file():
        raise not_found(f"{path} has no {CONFIG_FILE}; expected a Hugging Face model directory")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise invalid(f"{file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise invalid(f"{file} must hold a JSON object, got {type(config).__name__}")
    return ModelConfig.from_hf(config)


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a model directory: the shards its index lists, or its single file."""
    if not path.is_dir():
        raise not_found(f"model directory {path} does not exist")
    index = path / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise invalid(f"{index} is not a safetensors index: {e}") from e
        files = [path / name for name in names]
        absent = [str(f.name) for f in files if not f.is_file()]
        if absent:
            raise not_found(f"{index} lists shards that are missing: {absent}")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise invalid(
            f"{path} holds only pickle checkpoints {pickles[:3]}; MinT never unpickles weights, "
            "convert them to safetensors first"
        )
    raise not_found(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def hf_layout(model: Transformer) -> dict[str, list[tuple[str, int]]]:
    """For each distinct parameter of `model`, the Hugging Face tensors stacked (along dim 0) to make it, with
    their row counts. A tied lm_head is absent: it is embed_tokens.weight."""
    slices = packed_slices(model.config)
    layout = {}
    for name, param in model.named_parameters():
        module_path, kind = name.rsplit(".", 1)
        parent, _, module = module_path.rpartition(".")
        if module in Transformer.packed_modules:
            parts = zip(Transformer.packed_modules[module], slices[module], strict=True)
            layout[name] = [(f"model.{parent}.{part}.{kind}", rows) for part, rows in parts]
        else:
            hf_name = name if name.startswith("lm_head.") else f"model.{name}"
            layout[name] = [(hf_name, param.shape[0])]
    return layout


def hf_tensor_names(config: ModelConfig) -> set[str]:
    """The Hugging Face tensor names a checkpoint for `config` holds (no lm_head.weight when tied)."""
    with torch.device("meta"):
        return _names(hf_layout(Transformer(config)))


def _names(layout: dict[str, list[tuple[str, int]]]) -> set[str]:
    return {hf_name for parts in layout.values() for hf_name, _ in parts}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_safetensors_header(file: Path) -> tuple[dict, int]:
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise MintError(Code.DATA_LOSS, f"{file} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MintError(Code.DATA_LOSS, f"{file} has a corrupt safetensors header: {e}") from e
    return header, 8 + size


def base_description(path: str | Path) -> dict:
    """What the catalog records about a base model directory (RegisterBaseModel's fields but the name)."""
    config = read_config(Path(path))
    return {
        "architecture": config.architecture,
        "config": config.to_hf(),
        "weights_sha256": weights_sha256(path),
        "module_shapes": config.module_shapes(),
        "num_layers": config.num_layers,
    }
