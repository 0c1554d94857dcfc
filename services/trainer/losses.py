"""Loss functions over per-token logprobs of target tokens (Tinker's semantics: sums over tokens).

    cross_entropy        -sum(weights * logp)
    importance_sampling  -sum(exp(logp - sampler_logp) * advantages)
    ppo                  -sum(min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A)),  ratio = exp(logp - sampler_logp)

Each datum carries `target_tokens` and, per loss, `weights` or `logprobs` (the sampler's) and `advantages`,
one value per input token.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from mint.errors import invalid

LOSSES = ("cross_entropy", "importance_sampling", "ppo")


@dataclasses.dataclass(slots=True)
class Datum:
    tokens: list[int]
    target_tokens: list[int]
    weights: list[float] | None = None
    logprobs: list[float] | None = None
    advantages: list[float] | None = None

    def check(self, loss_fn: str, vocab_size: int) -> None:
        n = len(self.tokens)
        if n == 0:
            raise invalid("a datum needs at least one token")
        if any(not 0 <= t < vocab_size for t in self.tokens + self.target_tokens):
            raise invalid(f"token ids must be in 0..{vocab_size - 1}")
        need = {"cross_entropy": ("target_tokens",), "importance_sampling": ("target_tokens", "logprobs", "advantages"), "ppo": ("target_tokens", "logprobs", "advantages")}
        for key in need[loss_fn]:
            value = getattr(self, key)
            if value is None:
                raise invalid(f"loss {loss_fn} needs loss_fn_inputs[{key!r}]")
            if len(value) != n:
                raise invalid(f"loss_fn_inputs[{key!r}] has {len(value)} values for {n} tokens")
        for key in ("weights", "logprobs", "advantages"):
            value = getattr(self, key)
            if value is not None and not all(math.isfinite(v) for v in value):
                raise invalid(f"loss_fn_inputs[{key!r}] must be finite")


def check_loss(loss_fn: str, config: dict[str, float]) -> None:
    if loss_fn not in LOSSES:
        raise invalid(f"unknown loss_fn {loss_fn!r}; expected one of {LOSSES}")
    unknown = set(config) - {"clip_low", "clip_high"}
    if unknown:
        raise invalid(f"unknown loss_fn_config keys {sorted(unknown)}; ppo takes clip_low and clip_high")


def datum_loss(loss_fn: str, config: dict[str, float], logp: torch.Tensor, datum: Datum) -> torch.Tensor:
    """The loss of one datum from its target logprobs `logp` [n]."""
    if loss_fn == "cross_entropy":
        weights = torch.ones_like(logp) if datum.weights is None else logp.new_tensor(datum.weights)
        return -(weights * logp).sum()
    sampler = logp.new_tensor(datum.logprobs)
    advantages = logp.new_tensor(datum.advantages)
    ratio = torch.exp(logp - sampler)
    if datum.weights is not None:  # masks prompt positions, as for cross_entropy
        advantages = advantages * logp.new_tensor(datum.weights)
    if loss_fn == "importance_sampling":
        return -(ratio * advantages).sum()
    clipped = torch.clamp(ratio, 1 - config.get("clip_low", 0.2), 1 + config.get("clip_high", 0.2))
    return -torch.minimum(ratio * advantages, clipped * advantages).sum()
