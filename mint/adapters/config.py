"""The PEFT `adapter_config.json` of a LoRA adapter: parsed strictly, written so PEFT can load it."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from mint.errors import invalid
from mint.limits import json_depth

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_MODULES = LORA_MODULES[:4]
MLP_MODULES = LORA_MODULES[4:]
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 8  # PEFT's configs nest objects two or three deep (loftq_config, rank_pattern); no parser needs more
# What an adapter's scale (lora_alpha / r, or / sqrt(r) with rsLoRA) may be: from fp16's smallest normal number
# up to 1024, far past any trained adapter's (PEFT's defaults give 1 or 2). Outside it the LoRA term underflows
# to nothing or overflows half-precision activations. lora_alpha itself is bounded so that it stays a plain number.
MAX_LORA_ALPHA = 2.0**16
MAX_RANK = 2**16  # of the format; services narrow it (mint.adapters.Limits.max_rank)
SCALING_RANGE = (2.0**-14, 2.0**10)

# PEFT features that change what an adapter computes and that MinT does not implement. Each must be
# absent or left at its empty value; `bias` must be "none".
_UNSUPPORTED = (
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
    "fan_in_fan_out",
    "megatron_config",
    "loftq_config",
    "layer_replication",
    "exclude_modules",
    "trainable_token_indices",
    "target_parameters",
)


@dataclasses.dataclass(kw_only=True, slots=True)
class AdapterConfig:
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool = False
    base_model_name_or_path: str = ""
    lora_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or not 1 <= self.r <= MAX_RANK:
            raise invalid(f"adapter rank r must be an integer in 1..{MAX_RANK}, got {str(self.r)[:40]}")
        alpha = self.lora_alpha
        if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not (math.isfinite(alpha) and 0 < alpha <= MAX_LORA_ALPHA):
            raise invalid(f"lora_alpha must be a number in (0, {MAX_LORA_ALPHA:g}], got {alpha!r}")
        if not isinstance(self.use_rslora, bool):
            raise invalid(f"use_rslora must be true or false, got {self.use_rslora!r}")
        low, high = SCALING_RANGE
        if not low <= self.scaling <= high:
            divisor = f"sqrt(r) = {math.sqrt(self.r):g}" if self.use_rslora else f"r = {self.r}"
            raise invalid(
                f"lora_alpha {alpha:g} / {divisor} gives the scale {self.scaling:g}; it must be in [{low:g}, {high:g}]"
            )
        unknown = sorted(set(self.target_modules) - set(LORA_MODULES))
        if unknown or not self.target_modules:
            raise invalid(f"target_modules {list(self.target_modules)!r} must be a non-empty subset of {list(LORA_MODULES)}")
        self.target_modules = tuple(m for m in LORA_MODULES if m in self.target_modules)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @classmethod
    def from_json(cls, text: str | bytes) -> AdapterConfig:
        if len(text) > MAX_CONFIG_BYTES:
            raise invalid(f"adapter_config.json is {len(text)} bytes; the limit is {MAX_CONFIG_BYTES}")
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            if json_depth(text, MAX_CONFIG_DEPTH) > MAX_CONFIG_DEPTH:
                raise invalid(f"adapter_config.json nests arrays or objects more than {MAX_CONFIG_DEPTH} deep")
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise invalid(f"adapter_config.json is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise invalid("adapter_config.json must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AdapterConfig:
        peft_type = raw.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise invalid(f"peft_type {peft_type!r} is not supported; only LORA adapters are")
        for key in _UNSUPPORTED:
            if raw.get(key) not in (None, False, {}, [], ""):
                raise invalid(f"adapter_config.json sets {key}={raw[key]!r}, which MinT does not support")
        if raw.get("bias", "none") != "none":
            raise invalid(f"adapter_config.json sets bias={raw['bias']!r}; only bias='none' is supported")
        for key in ("r", "lora_alpha", "target_modules"):
            if key not in raw:
                raise invalid(f"adapter_config.json is missing {key!r}")
        targets = raw["target_modules"]
        if isinstance(targets, str):
            raise invalid(f"target_modules must be a list of module names, got the pattern {targets!r}")
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise invalid(f"target_modules must be a list of module names, got {targets!r}")
        dropout = raw.get("lora_dropout", 0.0)
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise invalid(f"lora_dropout must be in [0, 1), got {dropout!r}")
        use_rslora = raw.get("use_rslora") or False  # PEFT writes false; older configs may write null or omit it
        if not isinstance(use_rslora, bool):
            raise invalid(f"use_rslora must be true or false, got {use_rslora!r}")
        base = raw.get("base_model_name_or_path") or ""
        if not isinstance(base, str):
            raise invalid("base_model_name_or_path must be a string")
        return cls(
            r=raw["r"],
            lora_alpha=raw["lora_alpha"],
            target_modules=tuple(targets),
            use_rslora=use_rslora,
            base_model_name_or_path=base,
            lora_dropout=float(dropout),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "use_rslora": self.use_rslora,
            "lora_dropout": self.lora_dropout,
            "bias": "none",
            "fan_in_fan_out": False,
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": True,
            "modules_to_save": None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
