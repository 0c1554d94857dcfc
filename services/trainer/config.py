"""Trainer configuration: the fleet's and model hosts' shared fields (mint.config) and the trainer's own.
The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses

from mint.config import ModelHostConfig, env_field
from mint.errors import invalid


@dataclasses.dataclass(kw_only=True, slots=True)
class TrainerConfig(ModelHostConfig):
    max_rank: int = env_field("MINT_TRAINER_MAX_RANK", 128)
    state_dir: str = env_field("MINT_TRAINER_STATE_DIR", ".mint/trainer-state")
    batch_window_s: float = env_field("MINT_BATCH_WINDOW_S", 0.02)  # how long a pass waits for calls from other sessions
    # Bounds a pass's activations and logits (~2.3 MB a token at the SmolLM2 shape): peak memory stays flat
    # however many sessions join, and smaller passes let some policies sample while others train.
    max_tokens_per_pass: int = env_field("MINT_MAX_TOKENS_PER_PASS", 1024)
    max_tokens_per_call: int = env_field("MINT_MAX_TOKENS_PER_CALL", 65_536)  # all of one forward_backward's data (several passes)
    address: str = env_field("MINT_TRAINER_ADDRESS", "127.0.0.1:0")
    catalog_address: str = env_field("MINT_CATALOG_URL", "")  # where revisions are published (with service_key)
    max_workers: int = env_field("MINT_TRAINER_WORKERS", 64)
    # A session no call has used for this long is closed (its saved states stay loadable); 0: never.
    session_idle_s: float = env_field("MINT_TRAINER_SESSION_IDLE_S", 3600.0)
    # Open sessions a tenant may hold on this trainer. Reaching it refuses CreateSession rather than closing
    # the tenant's least recently used session: a session never vanishes under a client still meaning to use it.
    max_sessions_per_tenant: int = env_field("MINT_TRAINER_MAX_SESSIONS_PER_TENANT", 64)

    def __post_init__(self) -> None:
        ModelHostConfig.__post_init__(self)
        if not self.session_idle_s >= 0:
            raise invalid(
                f"session_idle_s (MINT_TRAINER_SESSION_IDLE_S) is {self.session_idle_s}; it must be a number of seconds >= 0 "
                "(0: sessions are never reaped for being idle)"
            )
        if self.max_sessions_per_tenant < 1:
            raise invalid(
                f"max_sessions_per_tenant (MINT_TRAINER_MAX_SESSIONS_PER_TENANT) is {self.max_sessions_per_tenant}; "
                "it must be at least 1"
            )
