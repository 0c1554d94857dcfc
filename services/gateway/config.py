"""Gateway configuration: the fleet's shared fields (mint.config) and the gateway's own. The environment is
read once, by `from_env`, at the entry point."""

from __future__ import annotations

import dataclasses

from mint.config import FleetConfig, env_field


@dataclasses.dataclass(kw_only=True, slots=True)
class GatewayConfig(FleetConfig):
    address: str = env_field("MINT_GATEWAY_ADDRESS", "0.0.0.0:50050")
    catalog_address: str = env_field("MINT_CATALOG_URL", "")
    trainer_address: str = env_field("MINT_TRAINER_URL", "")
    resolve_ttl_s: float = env_field("MINT_RESOLVE_TTL_S", 30.0)
    retries: int = env_field("MINT_GATEWAY_RETRIES", 2)  # other engines a request may try after its first
    max_workers: int = env_field("MINT_GATEWAY_WORKERS", 256)
    # The HTTP door (OpenAI-compatible API). Empty: the gRPC address's host on port 8080, or on any free port
    # when the gRPC port is 0 (tests, fleets of processes); "off": no HTTP door.
    http_address: str = env_field("MINT_GATEWAY_HTTP_ADDRESS", "")

    def __post_init__(self) -> None:
        FleetConfig.__post_init__(self)
        if not self.http_address:
            host, _, port = self.address.rpartition(":")
            self.http_address = f"{host}:{0 if port == '0' else 8080}"
