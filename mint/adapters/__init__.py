"""PEFT LoRA adapters as data: config, strict safetensors reading, validation against a base, read and write;
packing for slot copies (packing.py); what makes two adapters the same (identity.py) and the adapter a
server is asked to load (spec.py)."""

from mint.adapters.config import ATTN_MODULES, LORA_MODULES, MLP_MODULES, AdapterConfig
from mint.adapters.peft import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterWeights,
    BaseShapes,
    Limits,
    ValidatedAdapter,
    load_weights,
    read_adapter_dir,
    tensor_name,
    validate_adapter,
)

__all__ = [
    "ATTN_MODULES",
    "CONFIG_NAME",
    "LORA_MODULES",
    "MLP_MODULES",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterWeights",
    "BaseShapes",
    "Limits",
    "ValidatedAdapter",
    "load_weights",
    "read_adapter_dir",
    "tensor_name",
    "validate_adapter",
]
