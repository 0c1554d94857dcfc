"""Sampling and optimizer parameters, as clients write them and services check them (one definition)."""

from __future__ import annotations

import dataclasses
import math

from mint.errors import invalid
from mint.proto import common_pb2, trainer_pb2

# Temperatures below this sample greedily: softmax(logits / t) is already the argmax for any logits a model
# gives, and dividing by a smaller t only risks overflow (vLLM draws the line at the same value).
MIN_TEMPERATURE = 1e-5
MAX_TOP_LOGPROBS = 20  # OpenAI's limit, which clients and harnesses are written against


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
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens at each position

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
        if not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
            raise invalid(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {p.top_logprobs}")
        if p.top_logprobs and not p.logprobs:
            raise invalid("top_logprobs needs logprobs set: they are the alternatives to each sampled token's logprob")
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
            top_logprobs=p.top_logprobs,
        )


# Each Adam parameter's valid values: (low, high, whether low is valid, whether high is valid). Steps
# outside them turn weights into NaN (a non-positive eps divides by zero, a beta of 1 never forgets) or
# throw them far off (AdamW moves each weight by up to about learning_rate a step, and shrinks it by
# learning_rate * weight_decay).
ADAM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, 1.0, False, True),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "eps": (0.0, 1.0, False, True),
    "weight_decay": (0.0, 1.0, True, True),
    "grad_clip_norm": (0.0, math.inf, True, False),
}


@dataclasses.dataclass(frozen=True, slots=True)
class AdamParams:
    """AdamW's parameters. The defaults are the ones an unset field of the proto takes (trainer.proto)."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0: no clipping

    def check(self) -> None:
        """INVALID_ARGUMENT naming the first field outside its range (ADAM_RANGES), its value and the range."""
        for name, (low, high, low_valid, high_valid) in ADAM_RANGES.items():
            value = getattr(self, name)
            above = low <= value if low_valid else low < value
            below = value <= high if high_valid else value < high
            if not (math.isfinite(value) and above and below):
                valid = f"{'[' if low_valid else '('}{low:g}, {high:g}{']' if high_valid else ')'}"
                raise invalid(f"adam_params.{name} is {value}; it must be a finite number in {valid}")

    def to_proto(self) -> trainer_pb2.AdamParams:
        return trainer_pb2.AdamParams(**dataclasses.asdict(self))

    @classmethod
    def from_proto(cls, p: trainer_pb2.AdamParams) -> AdamParams:
        """Checked parameters from a request: each unset field (proto3 JSON clients leave out the ones they
        think are defaults) takes the default, each set one is checked, 0 included."""
        defaults = cls()
        params = cls(**{f.name: getattr(p if p.HasField(f.name) else defaults, f.name) for f in dataclasses.fields(cls)})
        params.check()
        return params
