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

# What each loss reads from a datum's loss_fn_inputs: the inputs it needs, then those it may take. Every input
# holds one value per input token.
LOSS_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cross_entropy": (("target_tokens",), ("weights",)),
    "importance_sampling": (("target_tokens", "logprobs", "advantages"), ("weights",)),
    "ppo": (("target_tokens", "logprobs", "advantages"), ("weights",)),
}
LOSSES = tuple(LOSS_INPUTS)
INT_INPUTS = ("target_tokens",)
FLOAT_INPUTS = ("weights", "logprobs", "advantages")
# loss_fn_config keys per loss, and each key's valid range [low, high): ppo clips the ratio to
# [1 - clip_low, 1 + clip_high], so clip_low below 1 keeps the lower bound positive.
LOSS_CONFIG: dict[str, dict[str, tuple[float, float]]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low": (0.0, 1.0), "clip_high": (0.0, math.inf)},
}


@dataclasses.dataclass(slots=True)
class LossRow:
    """One datum of a forward_backward or forward call as its loss reads it: the tokens, and each loss input
    as a plain list (None where the caller sent none). The client's datum is mint.sdk.types.Datum."""

    tokens: list[int]
    target_tokens: list[int] | None = None
    weights: list[float] | None = None
    logprobs: list[float] | None = None
    advantages: list[float] | None = None

    def check(self, loss_fn: str, vocab_size: int, index: int = 0) -> None:
        """INVALID_ARGUMENT naming datum `index`, the input and what was expected, for anything the pass could
        not run on: a call is checked whole before it joins a batch, so it cannot fail its batch-mates."""
        where = f"datum {index}"
        n = len(self.tokens)
        if n == 0:
            raise invalid(f"{where}: tokens is empty; a datum needs at least one token")
        _check_ids(f"{where}: tokens", self.tokens, vocab_size)
        needed, optional = LOSS_INPUTS[loss_fn]
        for key in (*INT_INPUTS, *FLOAT_INPUTS):
            values = getattr(self, key)
            if values is None:
                if key in needed:
                    raise invalid(f"{where}: loss {loss_fn} needs loss_fn_inputs[{key!r}], one value per token")
                continue
            if key not in needed + optional:
                raise invalid(f"{where}: loss {loss_fn} takes no loss_fn_inputs[{key!r}]; it takes {', '.join(needed + optional)}")
            if len(values) != n:
                raise invalid(f"{where}: loss_fn_inputs[{key!r}] has {len(values)} values; expected {n}, one per token")
            if key in INT_INPUTS:
                _check_ids(f"{where}: loss_fn_inputs[{key!r}]", values, vocab_size)
            else:
                bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    raise invalid(f"{where}: loss_fn_inputs[{key!r}][{bad}] is {values[bad]}; values must be finite")


def _check_ids(what: str, ids: list[int], vocab_size: int) -> None:
    bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise invalid(f"{what}[{bad}] is {ids[bad]}; token ids must be in 0..{vocab_size - 1}")


def check_loss(loss_fn: str, config: dict[str, float]) -> None:
    if loss_fn not in LOSSES:
        raise invalid(f"unknown loss_fn {loss_fn!r}; expected one of {LOSSES}")
    ranges = LOSS_CONFIG[loss_fn]
    unknown = sorted(set(config) - set(ranges))
    if unknown:
        takes = f"it takes {', '.join(ranges)}" if ranges else "it takes none"
        raise invalid(f"unknown loss_fn_config keys {unknown} for loss {loss_fn}; {takes}")
    for key, value in config.items():
        low, high = ranges[key]
        if not (math.isfinite(value) and low <= value < high):
            raise invalid(f"loss_fn_config[{key!r}] is {value}; it must be a finite number in [{low:g}, {high:g})")


def datum_loss(loss_fn: str, config: dict[str, float], logp: torch.Tensor, datum: LossRow) -> torch.Tensor:
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
