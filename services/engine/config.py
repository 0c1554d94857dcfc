"""Engine configuration: the fleet's and model hosts' shared fields (mint.config) and the engine's own.
The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses

from mint.config import ModelHostConfig, env_field

GiB = 1024**3


@dataclasses.dataclass(kw_only=True, slots=True)
class EngineConfig(ModelHostConfig):
    engine_id: str = env_field("MINT_ENGINE_ID", "")
    max_lora_rank: int = env_field("MINT_MAX_LORA_RANK", 64)
    device_budget_bytes: int = env_field("MINT_DEVICE_BUDGET_BYTES", 2 * GiB)  # adapter slots (each sized for max_lora_rank)
    max_slots: int = env_field("MINT_MAX_SLOTS", 256)
    host_budget_bytes: int = env_field("MINT_HOST_BUDGET_BYTES", 4 * GiB)  # packed adapters in host memory
    disk_budget_bytes: int = env_field("MINT_DISK_BUDGET_BYTES", 20 * GiB)  # safetensors in the local cache
    cache_dir: str = env_field("MINT_ENGINE_CACHE_DIR", ".mint/engine-cache")
    kv_cache_bytes: int = env_field("MINT_KV_CACHE_BYTES", 1 * GiB)
    block_size: int = env_field("MINT_BLOCK_SIZE", 16)
    max_model_len: int = env_field("MINT_MAX_MODEL_LEN", 0)  # 0: min(model's max positions, 4096)
    max_batched_tokens: int = env_field("MINT_MAX_BATCHED_TOKENS", 4096)
    max_num_seqs: int = env_field("MINT_MAX_NUM_SEQS", 256)
    load_concurrency: int = env_field("MINT_LOAD_CONCURRENCY", 4)  # loader threads: fetches wait on the network, packing is short
    address: str = env_field("MINT_ENGINE_ADDRESS", "127.0.0.1:0")
    advertise_address: str = env_field("MINT_ENGINE_ADVERTISE", "")  # how others reach this engine; default: 127.0.0.1:<port>
    catalog_address: str = env_field("MINT_CATALOG_URL", "")  # where adapter blobs come from
    blob_dir: str = env_field("MINT_BLOB_DIR", "")  # the catalog's blob store, where this engine can read it (same host, shared volume)
    torch_threads: int = env_field("MINT_TORCH_THREADS", 0)  # intra-op threads of this process; 0: torch's default (all cores)
