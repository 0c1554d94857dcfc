"""An adapter revision as a server that loads it knows it: the blob, the address a caller named it by, and
the config its tensors are packed with (from the catalog's AdapterRef). Its `key` is its identity
(identity.py): two specs with the same bytes and config are the same adapter, whatever their addresses."""

from __future__ import annotations

import dataclasses

from mint.adapters.config import AdapterConfig
from mint.adapters.identity import adapter_key


@dataclasses.dataclass(frozen=True, slots=True)
class AdapterSpec:
    sha256: str
    address: str
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]
    key: str = dataclasses.field(init=False, repr=False, compare=False)  # identity.adapter_key

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", adapter_key(self.sha256, self.rank, self.alpha, self.use_rslora, self.target_modules))

    @property
    def config(self) -> AdapterConfig:
        """INVALID_ARGUMENT when the fields are not a valid LoRA config (AdapterConfig's checks)."""
        return AdapterConfig(r=self.rank, lora_alpha=self.alpha, target_modules=self.target_modules, use_rslora=self.use_rslora)
