"""What every MinT service's configuration shares, and reading it from the environment once.

Each service's config (`services/<name>/config.py`) extends `FleetConfig`, or `ModelHostConfig` for the
services that hold a base model (engines, trainers). A field names the `MINT_*` variable that sets it
(`env_field`), and `from_env` — called once, at the service's entry point — reads them all, refusing a
value it cannot use with the variable, the value and what would be valid:

    INVALID_ARGUMENT: MINT_HEARTBEAT_S='soon' is not a number
    INVALID_ARGUMENT: dtype (MINT_DTYPE) is 'fp8', not a dtype this service runs; use one of float32, bfloat16, float16
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from mint.errors import invalid
from mint.limits import RequestLimits
from mint.tls import TLSConfig

DTYPE_NAMES = ("float32", "bfloat16", "float16")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_field(var: str, default: Any = dataclasses.MISSING) -> Any:
    """A config field set by the environment variable `var` (required when it has no default)."""
    return dataclasses.field(default=default, metadata={"env": var})


def _parse(var: str, text: str, kind: str) -> Any:
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise invalid(f"{var}={text!r} is not {'an integer' if kind == 'int' else 'a number'}") from None
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise invalid(f"{var}={text!r} is not a yes/no value; use one of {', '.join(_TRUE + _FALSE)}")
    return text


@dataclasses.dataclass(kw_only=True, slots=True)
class FleetConfig:
    redis_url: str = env_field("MINT_REDIS_URL", "")  # the fleet's scheduler and notices; empty: not in a fleet
    redis_prefix: str = env_field("MINT_REDIS_PREFIX", "mint:")  # keys and channels, so fleets can share a Redis
    heartbeat_s: float = env_field("MINT_HEARTBEAT_S", 1.0)  # engines' heartbeat period; 3 missed: reaped
    service_key: str = env_field("MINT_SERVICE_KEY", "")  # how MinT's services call each other
    key_cache_ttl_s: float = env_field("MINT_KEY_CACHE_TTL_S", 10.0)  # how long a revoked key may still work here
    request_limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)  # MINT_LIMIT_* (mint.limits)
    tls: TLSConfig = dataclasses.field(default_factory=TLSConfig)  # MINT_TLS_* (mint.tls): its port and its channels

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0:
            raise invalid(f"heartbeat_s (MINT_HEARTBEAT_S) is {self.heartbeat_s}; it must be a positive number of seconds")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides):
        """The config from `env` (default: the process environment), then `overrides`."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            var = field.metadata.get("env")
            if var and var in env:
                values[field.name] = _parse(var, env[var], str(field.type))
        values["request_limits"] = RequestLimits.from_env(env)
        values["tls"] = TLSConfig.from_env(env)
        return cls(**{**values, **overrides})


@dataclasses.dataclass(kw_only=True, slots=True)
class ModelHostConfig(FleetConfig):
    model_path: str = env_field("MINT_MODEL_PATH")  # a Hugging Face base directory
    base_model: str = env_field("MINT_BASE_MODEL", "")  # the catalog's name for the base; default: the directory's
    device: str = env_field("MINT_DEVICE", "cpu")
    dtype: str = env_field("MINT_DTYPE", "float32")

    def __post_init__(self) -> None:
        FleetConfig.__post_init__(self)
        if self.dtype not in DTYPE_NAMES:
            raise invalid(f"dtype (MINT_DTYPE) is {self.dtype!r}, not a dtype this service runs; use one of {', '.join(DTYPE_NAMES)}")

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)
