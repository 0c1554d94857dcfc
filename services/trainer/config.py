"""Trainer configuration. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses
import os

import torch

from mint.limits import RequestLimits


@dataclasses.dataclass(kw_only=True, slots=True)
class TrainerConfig:
    model_path: str
    base_model: str = ""            # the catalog's name for the base; default: the directory's name
    device: str = "cpu"
    dtype: str = "float32"
    max_rank: int = 128
    state_dir: str = ".mint/trainer-state"
    batch_window_s: float = 0.02    # how long a pass waits for calls from other sessions
    # Bounds a pass's activations and logits (~2.3 MB a token at the SmolLM2 shape): peak memory stays flat
    # however many sessions join, and smaller passes let some policies sample while others train.
    max_tokens_per_pass: int = 1024
    max_tokens_per_call: int = 65_536  # all of one forward_backward's data (it runs as several passes)
    address: str = "127.0.0.1:0"
    catalog_address: str = ""       # where revisions are published
    api_key: str = ""               # a service key: publishes for the session's tenant
    gateway_address: str = ""       # where recipe jobs reach sampling and training (RunRecipe)
    max_recipe_data_bytes: int = 16 * 1024 * 1024  # the examples a RunRecipe request uploads (JSONL)
    max_workers: int = 64
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)  # mint.limits

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    @classmethod
    def from_env(cls, **overrides) -> TrainerConfig:
        env = os.environ
        names = {
            "model_path": ("MINT_MODEL_PATH", str),
            "base_model": ("MINT_BASE_MODEL", str),
            "device": ("MINT_DEVICE", str),
            "dtype": ("MINT_DTYPE", str),
            "state_dir": ("MINT_TRAINER_STATE_DIR", str),
            "max_tokens_per_pass": ("MINT_MAX_TOKENS_PER_PASS", int),
            "max_tokens_per_call": ("MINT_MAX_TOKENS_PER_CALL", int),
            "address": ("MINT_TRAINER_ADDRESS", str),
            "catalog_address": ("MINT_CATALOG_URL", str),
            "api_key": ("MINT_SERVICE_KEY", str),
            "gateway_address": ("MINT_GATEWAY_URL", str),
            "max_recipe_data_bytes": ("MINT_MAX_RECIPE_DATA_BYTES", int),
        }
        values = {field: kind(env[var]) for field, (var, kind) in names.items() if var in env}
        values["request_limits"] = RequestLimits.from_env(env)
        return cls(**{**values, **overrides})
