"""The shape of a dense decoder-only base model, and its translation to and from Hugging Face `config.json`.

One `ModelConfig` describes the four families MinT serves (Llama, Mistral, Qwen2, Qwen3). They differ only
in a few switches: q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3), and Llama 3 rope scaling. Anything a
family can express that MinT does not implement (sliding-window attention, o_proj or MLP bias, other rope
types, other activations) is refused when the config is read, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from mint.config import DTYPE_NAMES
from mint.errors import invalid

Architecture = Literal["llama", "mistral", "qwen2", "qwen3"]
ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")

_HF_CLASS_NAMES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
_HF_REQUIRED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)
_LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    architecture: Architecture
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    # None: hidden_size // num_heads, filled in by __post_init__.
    head_dim: int | None = None
    rope_theta: float = 10000.0
    # None, or Llama 3 scaling: {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}.
    rope_scaling: dict[str, float] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    # Bias on q, k and v only (Qwen2); o_proj never has one here.
    attention_bias: bool = False
    # RMSNorm over each head of q and k, before rope (Qwen3).
    qk_norm: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise invalid(
                f"architecture {self.architecture!r} is not supported; expected one of {ARCHITECTURES}"
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise invalid(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise invalid(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        if self.head_dim <= 0 or self.head_dim % 2:
            raise invalid(
                f"head_dim must be a positive even number for rotary embeddings, got {self.head_dim}"
            )
        if self.rope_scaling is not None:
            missing = [key for key in _LLAMA3_ROPE_KEYS if key not in self.rope_scaling]
            extra = sorted(set(self.rope_scaling) - set(_LLAMA3_ROPE_KEYS))
            if missing or extra:
                raise invalid(
                    f"rope_scaling must hold exactly {_LLAMA3_ROPE_KEYS} (Llama 3 scaling); "
                    f"missing {missing}, unexpected {extra}"
                )
            if not self.rope_scaling["high_freq_factor"] > self.rope_scaling["low_freq_factor"]:
                raise invalid(
                    f"rope_scaling needs high_freq_factor > low_freq_factor, got {self.rope_scaling}"
                )
        if self.torch_dtype not in _DTYPES:
            raise invalid(
                f"torch_dtype {self.torch_dtype!r} is not supported; expected one of {sorted(_DTYPES)}"
            )
        self.eos_token_ids = tuple(self.eos_token_ids)

    # ----------------------------------------------------------------------------------------------- derived

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.torch_dtype]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each LoRA-targetable projection, as PEFT sees the unpacked model."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_size),
            "k_proj": (h, self.kv_size),
            "v_proj": (h, self.kv_size),
            "o_proj": (self.q_size, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def num_parameters(self) -> int:
        """Distinct parameters of the model (a tied lm_head counted once)."""
        per_layer = sum(fan_in * fan_out for fan_in, fan_out in self.module_shapes().values())
        per_layer += 2 * self.hidden_size  # input_layernorm, post_attention_layernorm
        if self.attention_bias:
            per_layer += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embeddings + self.num_layers * per_layer + self.hidden_size

    # ----------------------------------------------------------------------------------------------- presets

    @classmethod
    def from_name(cls, preset: str, arch: str = "llama") -> ModelConfig:
        """A named shape, with the family switches `arch` implies (q/k/v bias for qwen2, q/k norm for qwen3)."""
        if preset not in _PRESETS:
            raise invalid(f"unknown model preset {preset!r}; expected one of {sorted(_PRESETS)}")
        if arch not in ARCHITECTURES:
            raise invalid(f"architecture {arch!r} is not supported; expected one of {ARCHITECTURES}")
        return cls(
            architecture=arch,  # type: ignore[arg-type]
            attention_bias=arch == "qwen2",
            qk_norm=arch == "qwen3",
            **_PRESETS[preset],
        )

    # ------------------------------------------------------------------------------------ Hugging Face JSON

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` dict (transformers 4.x or 5.x spelling)."""
        model_type = config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise invalid(f"model_type {model_type!r} is not supported; expected one of {ARCHITECTURES}")
        missing = [key for key in _HF_REQUIRED_KEYS if key not in config]
        if missing:
            raise invalid(f"the {model_type} config lacks {missing}")
        _refuse_unsupported_features(model_type, config)

        # transformers 5 nests rope_theta inside rope_parameters; 4.x keeps it top level beside rope_scaling.
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "default":
            rope_scaling = None
        elif rope_type == "llama3":
            missing = [key for key in _LLAMA3_ROPE_KEYS if key not in rope]
            if missing:
                raise invalid(f"llama3 rope scaling lacks {missing}")
            rope_scaling = {key: rope[key] for key in _LLAMA3_ROPE_KEYS}
        else:
            raise invalid(f"rope type {rope_type!r} is not supported; expected 'default' or 'llama3'")

        num_heads = config["num_attention_heads"]
        head_dim = config.get("head_dim")
        if head_dim is None and model_type == "qwen3":
            head_dim = 128  # Qwen3Config's default is a constant, not hidden_size // heads.
        eos = config.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
        return cls(
            architecture=model_type,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=config.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            # Qwen2 always has q/k/v bias; the flag is not even in its config.
            attention_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(dtype).removeprefix("torch."),
        )

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that transformers 4.x and 5.x load into the equivalent model."""
        config: dict[str, Any] = {
            "architectures": [_HF_CLASS_NAMES[self.architecture]],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None
            if self.rope_scaling is None
            else {"rope_type": "llama3", **self.rope_scaling},
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": _hf_token_ids(self.eos_token_ids),
            "torch_dtype": self.torch_dtype,
        }
        if self.architecture in ("llama", "qwen3"):
            config["attention_bias"] = False
        if self.architecture == "llama":
            config["mlp_bias"] = False
        if self.architecture == "mistral":
            config["sliding_window"] = None
        if self.architecture in ("qwen2", "qwen3"):
            config["use_sliding_window"] = False
            config["sliding_window"] = None
        return config


def _hf_token_ids(ids: tuple[int, ...]) -> int | list[int] | None:
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else list(ids)


def _refuse_unsupported_features(model_type: str, config: dict[str, Any]) -> None:
    if config.get("hidden_act", "silu") != "silu":
        raise invalid(f"hidden_act {config['hidden_act']!r} is not supported; only 'silu' is")
    if config.get("mlp_bias"):
        raise invalid("mlp_bias=true is not supported")
    # Llama and Qwen3 put attention_bias on o_proj as well as q/k/v; MinT's o_proj has no bias.
    if model_type in ("llama", "qwen3") and config.get("attention_bias"):
        raise invalid(f"attention_bias=true is not supported for {model_type} (it would add an o_proj bias)")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise invalid(
            f"partial_rotary_factor {config['partial_rotary_factor']} is not supported; only 1.0 is"
        )
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", model_type == "mistral")
    max_positions = config.get("max_position_embeddings", 2048)
    # A window at least as long as the context never masks anything, so it is the same as full attention.
    if uses_window and window is not None and window < max_positions:
        raise invalid(
            f"sliding_window={window} (< max_position_embeddings={max_positions}) is not supported; "
            "MinT implements full causal attention only"
        )
    layer_types = set(config.get("layer_types") or ()) - {"full_attention"}
    if layer_types:
        raise invalid(f"layer_types {sorted(layer_types)} are not supported; only full_attention is")


_PRESETS: dict[str, dict[str, Any]] = {
    # Small enough that a test builds, saves and runs it in well under a second.
    "tiny": dict(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
    # SmolLM2-135M's dimensions: realistic timings without its weights.
    "smollm2-shape": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
}
