"""Token sampling: greedy, temperature, top-k, top-p, per-sample seeded generators, logprobs.

Logprobs are those of the model's own distribution (log-softmax of the raw logits), whatever the sampling
transform, as vLLM reports them by default; RL code compares them with trainer logprobs of the same model.
"""

from __future__ import annotations

import math

import torch

from mint.params import SamplingParams


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
    """Next token of each row, and its logprob under the model (NaN for rows that did not ask for one:
    a log-softmax over the vocabulary costs as much as sampling itself)."""
    tokens = logits.argmax(dim=-1)
    for row, p in enumerate(params):
        if not p.greedy:
            tokens[row] = _sample_row(logits[row], p, generators[row])
    wanted = [row for row, p in enumerate(params) if p.logprobs]
    chosen = [math.nan] * len(params)
    if wanted:
        rows = torch.tensor(wanted, device=logits.device)
        picked = torch.log_softmax(logits.index_select(0, rows), dim=-1).gather(1, tokens.index_select(0, rows).unsqueeze(1))
        for row, value in zip(wanted, picked.squeeze(1).tolist(), strict=True):
            chosen[row] = value
    return tokens.tolist(), chosen


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
