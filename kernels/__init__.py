"""LoRA ops for many adapters over one resident base model: segment-sorted shrink/expand (dense and
MoE expert LoRA), their autograd, and the per-step metadata they share. See kernels/README.md."""

from kernels.autograd import LoRAExpandFn, LoRAShrinkFn, lora_linear_delta
from kernels.dispatch import HAS_TRITON, lora_expand, lora_expand_moe, lora_shrink, lora_shrink_moe
from kernels.metadata import LoRAMeta, MoELoRAMeta, SegmentRun
from kernels.reference import lora_expand_moe_ref, lora_expand_ref, lora_shrink_moe_ref, lora_shrink_ref

__all__ = [
    "HAS_TRITON",
    "LoRAExpandFn",
    "LoRAMeta",
    "LoRAShrinkFn",
    "MoELoRAMeta",
    "SegmentRun",
    "lora_expand",
    "lora_expand_moe",
    "lora_expand_moe_ref",
    "lora_expand_ref",
    "lora_linear_delta",
    "lora_shrink",
    "lora_shrink_moe",
    "lora_shrink_moe_ref",
    "lora_shrink_ref",
]
