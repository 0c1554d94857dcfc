"""Engine configuration. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses
import os

import torch

from mint.limits import RequestLimits

GiB = 1024**3


@dataclasses.dataclass(kw_only=True, slots=True)
class EngineConfig:
    model_path: str
    base_model: str = ""              # the catalog's name for the base; default: the directory's name
    engine_id: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    max_lora_rank: int = 64
    device_budget_bytes: int = 2 * GiB  # adapter slots (each sized for max_lora_rank)
    max_slots: int = 256
    host_budget_bytes: int = 4 * GiB    # packed adapters in host memory
    disk_budget_bytes: int = 20 * GiB   # safetensors in the local cache
    cache_dir: str = ".mint/engine-cache"
    kv_cache_bytes: int = 1 * GiB
    block_size: int = 16
    max_model_len: int = 0              # 0: min(model's max positions, 4096)
    max_batched_tokens: int = 4096
    max_num_seqs: int = 256
    load_concurrency: int = 4          # loader threads: fetches wait on the network, packing is short
    address: str = "127.0.0.1:0"
    advertise_address: str = ""         # how others reach this engine; default: 127.0.0.1:<port>
    catalog_address: str = ""           # where adapter blobs come from
    blob_dir: str = ""                  # the catalog's blob store, where this engine can read it (same host, shared volume)
    api_key: str = ""                   # a service key: for the catalog, and required of callers
    redis_url: str = ""                 # the fleet scheduler; empty: not registered anywhere
    redis_prefix: str = "mint:"
    heartbeat_s: float = 1.0
    torch_threads: int = 0              # intra-op threads of this process; 0: torch's default (all cores)
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)  # mint.limits

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    @classmethod
    def from_env(cls, **overrides) -> EngineConfig:
        env = os.environ
        names = {
            "model_path": ("MINT_MODEL_PATH", str),
            "base_model": ("MINT_BASE_MODEL", str),
            "engine_id": ("MINT_ENGINE_ID", str),
            "device": ("MINT_DEVICE", str),
            "dtype": ("MINT_DTYPE", str),
            "max_lora_rank": ("MINT_MAX_LORA_RANK", int),
            "device_budget_bytes": ("MINT_DEVICE_BUDGET_BYTES", int),
            "host_budget_bytes": ("MINT_HOST_BUDGET_BYTES", int),
            "disk_budget_bytes": ("MINT_DISK_BUDGET_BYTES", int),
            "cache_dir": ("MINT_ENGINE_CACHE_DIR", str),
            "kv_cache_bytes": ("MINT_KV_CACHE_BYTES", int),
            "max_batched_tokens": ("MINT_MAX_BATCHED_TOKENS", int),
            "load_concurrency": ("MINT_LOAD_CONCURRENCY", int),
            "address": ("MINT_ENGINE_ADDRESS", str),
            "advertise_address": ("MINT_ENGINE_ADVERTISE", str),
            "catalog_address": ("MINT_CATALOG_URL", str),
            "blob_dir": ("MINT_BLOB_DIR", str),
            "api_key": ("MINT_SERVICE_KEY", str),
            "redis_url": ("MINT_REDIS_URL", str),
            "redis_prefix": ("MINT_REDIS_PREFIX", str),
            "heartbeat_s": ("MINT_HEARTBEAT_S", float),
            "torch_threads": ("MINT_TORCH_THREADS", int),
        }
        values = {field: kind(env[var]) for field, (var, kind) in names.items() if var in env}
        values["request_limits"] = RequestLimits.from_env(env)
        return cls(**{**values, **overrides})
