"""The PEFT `adapter_config.json` of a LoRA adapter: parsed strictly, written so PEFT can load it."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from mint.errors import invalid

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_MODULES = LORA_MODULES[:4]
MLP_MODULES = LORA_MODULES[4:]
MAX_CONFIG_BYTES = 64 * 1024

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
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise invalid(f"adapter rank r must be a positive integer, got {self.r!r}")
        if not isinstance(self.lora_alpha, int | float) or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            raise invalid(f"lora_alpha must be a positive finite number, got {self.lora_alpha!r}")
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
        base = raw.get("base_model_name_or_path") or ""
        if not isinstance(base, str):
            raise invalid("base_model_name_or_path must be a string")
        return cls(
            r=raw["r"],
            lora_alpha=raw["lora_alpha"],
            target_modules=tuple(targets),
            use_rslora=bool(raw.get("use_rslora", False)),
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
