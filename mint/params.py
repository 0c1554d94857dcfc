"""Sampling and optimizer parameters, as clients write them and services check them (one definition)."""

from __future__ import annotations

import dataclasses
import math

from mint.errors import invalid
from mint.proto import common_pb2, trainer_pb2

# Temperatures below this sample greedily: softmax(logits / t) is already the argmax for any logits a model
# gives, and dividing by a smaller t only risks overflow (vLLM draws the line at the same value).
MIN_TEMPERATURE = 1e-5


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0  # 0 (or below MIN_TEMPERATURE): greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None  # sample i of a seeded request draws from seed + i
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    logprobs: bool = False
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    def to_proto(self) -> common_pb2.SamplingParams:
        fields = dataclasses.asdict(self)
        seed = fields.pop("seed")
        message = common_pb2.SamplingParams(**fields)
        if seed is not None:
            message.seed = seed
        return message

    @classmethod
    def from_proto(cls, p: common_pb2.SamplingParams, *, max_model_len: int, vocab_size: int) -> SamplingParams:
        """Checked parameters from a request (INVALID_ARGUMENT naming the bad one)."""
        if p.max_tokens < 1:
            raise invalid(f"max_tokens must be >= 1, got {p.max_tokens}")
        if p.max_tokens > max_model_len:
            raise invalid(f"max_tokens {p.max_tokens} exceeds the engine's max_model_len {max_model_len}")
        if not math.isfinite(p.temperature) or p.temperature < 0:
            raise invalid(f"temperature must be a finite number >= 0 (0: greedy, as is anything below {MIN_TEMPERATURE:g}), got {p.temperature}")
        if p.top_k < 0:
            raise invalid(f"top_k must be >= 0 (0 = off), got {p.top_k}")
        if not math.isfinite(p.top_p) or not 0 <= p.top_p <= 1:
            raise invalid(f"top_p must be in [0, 1] (0 or 1 = off), got {p.top_p}")
        if p.n < 0 or p.n > 64:
            raise invalid(f"n must be in 1..64, got {p.n}")
        if len(p.stop) > 16 or any(not s or len(s) > 256 for s in p.stop):
            raise invalid("stop takes at most 16 non-empty strings of up to 256 characters")
        bad = [t for t in p.stop_token_ids if not 0 <= t < vocab_size]
        if bad:
            raise invalid(f"stop_token_ids {bad} are outside the vocabulary (0..{vocab_size - 1})")
        return cls(
            max_tokens=p.max_tokens,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p if p.top_p > 0 else 1.0,
            seed=p.seed if p.HasField("seed") else None,
            stop=tuple(p.stop),
            stop_token_ids=tuple(p.stop_token_ids),
            n=p.n or 1,
            logprobs=p.logprobs,
            ignore_eos=p.ignore_eos,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AdamParams:
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0: no clipping

    def check(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise invalid(f"learning_rate must be positive, got {self.learning_rate}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise invalid(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.eps <= 0 or self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise invalid("eps must be > 0; weight_decay and grad_clip_norm must be >= 0")

    def to_proto(self) -> trainer_pb2.AdamParams:
        return trainer_pb2.AdamParams(**dataclasses.asdict(self))

    @classmethod
    def from_proto(cls, p: trainer_pb2.AdamParams) -> AdamParams:
        """Unset (zero) fields take the defaults, except weight decay and clipping, where 0 means off."""
        return cls(
            learning_rate=p.learning_rate or cls.learning_rate, beta1=p.beta1 or cls.beta1, beta2=p.beta2 or cls.beta2,
            eps=p.eps or cls.eps, weight_decay=p.weight_decay, grad_clip_norm=p.grad_clip_norm,
        )
