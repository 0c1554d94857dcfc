"""Gateway configuration. The environment is read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses
import os

from mint.limits import RequestLimits


@dataclasses.dataclass(kw_only=True, slots=True)
class GatewayConfig:
    address: str = "0.0.0.0:50050"
    catalog_address: str = ""
    trainer_address: str = ""
    redis_url: str = ""
    redis_prefix: str = "mint:"
    service_key: str = ""  # how the gateway calls engines
    heartbeat_s: float = 1.0  # engines' heartbeat period; engines unseen for 3 periods are reaped
    resolve_ttl_s: float = 30.0
    retries: int = 2
    max_workers: int = 256
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)  # mint.limits

    @classmethod
    def from_env(cls, **overrides) -> GatewayConfig:
        env = os.environ
        names = {
            "address": "MINT_GATEWAY_ADDRESS",
            "catalog_address": "MINT_CATALOG_URL",
            "trainer_address": "MINT_TRAINER_URL",
            "redis_url": "MINT_REDIS_URL",
            "redis_prefix": "MINT_REDIS_PREFIX",
            "service_key": "MINT_SERVICE_KEY",
        }
        values: dict = {field: env[var] for field, var in names.items() if var in env}
        if "MINT_HEARTBEAT_S" in env:
            values["heartbeat_s"] = float(env["MINT_HEARTBEAT_S"])
        values["request_limits"] = RequestLimits.from_env(env)
        return cls(**{**values, **overrides})
