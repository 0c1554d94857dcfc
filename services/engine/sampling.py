"""Token sampling: greedy, temperature, top-k, top-p, per-sample seeded generators, logprobs.

Logprobs are those of the model's own distribution (log-softmax of the raw logits), whatever the sampling
transform, as vLLM reports them by default; RL code compares them with trainer logprobs of the same model.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from mint.errors import invalid
from mint.proto import common_pb2


@dataclasses.dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    logprobs: bool = False
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_proto(cls, p: common_pb2.SamplingParams, *, max_model_len: int, vocab_size: int) -> SamplingParams:
        if p.max_tokens < 1:
            raise invalid(f"max_tokens must be >= 1, got {p.max_tokens}")
        if p.max_tokens > max_model_len:
            raise invalid(f"max_tokens {p.max_tokens} exceeds the engine's max_model_len {max_model_len}")
        if not math.isfinite(p.temperature) or p.temperature < 0:
            raise invalid(f"temperature must be >= 0, got {p.temperature}")
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


def make_generator(params: SamplingParams, index: int, device: torch.device | str) -> torch.Generator | None:
    """A generator per sample when seeded (sample i of seed s uses s + i), so results reproduce
    regardless of what else shares the batch."""
    if params.greedy or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed + index)


def sample(
    logits: torch.Tensor,  # [N, vocab] float32
    params: list[SamplingParams],  # one per row
    generators: list[torch.Generator | None],
) -> tuple[list[int], list[float]]:
    """Next token of each row and its logprob under the model."""
    logprobs = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    for row, p in enumerate(params):
        if not p.greedy:
            tokens[row] = _sample_row(logits[row], p, generators[row])
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens.tolist(), chosen.tolist()


def _sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    scores = logits / p.temperature
    if 0 < p.top_k < scores.shape[0]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= p.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]
