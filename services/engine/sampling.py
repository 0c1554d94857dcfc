"""Token sampling: greedy, temperature, top-k, top-p, per-sample seeded generators, logprobs and the top-k
alternatives' logprobs.

Logprobs are those of the model's own distribution (log-softmax of the raw logits), whatever the sampling
transform, as vLLM reports them by default; RL code compares them with trainer logprobs of the same model.

Every parameter value `SamplingParams.from_proto` accepts samples without overflow: temperatures below
`MIN_TEMPERATURE` (1e-45 included) sample greedily, which is the limit softmax(logits / t) tends to as t
goes to 0, and scores are shifted so that their maximum is 0 before they are divided by the temperature,
so no quotient overflows to +inf. Rows must hold finite logits (the engine fails a request whose adapter
produced any other before it gets here).
"""

from __future__ import annotations

import math

import torch

from mint.params import MIN_TEMPERATURE, SamplingParams

__all__ = ["MIN_TEMPERATURE", "SamplingParams", "make_generator", "sample"]

_SEEDS = 2**64  # torch generators take seeds in [0, 2^64)


def make_generator(params: SamplingParams, index: int, device: torch.device | str) -> torch.Generator | None:
    """A generator per sample when seeded (sample i of seed s uses s + i, modulo 2^64), so results reproduce
    regardless of what else shares the batch."""
    if params.greedy or params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed((params.seed + index) % _SEEDS)


TopLogprobs = tuple[list[int], list[float]]  # the k most likely token ids, most likely first, and their logprobs


def sample(
    logits: torch.Tensor,  # [N, vocab] float32, finite
    params: list[SamplingParams],  # one per row
    generators: list[torch.Generator | None],
) -> tuple[list[int], list[float], list[TopLogprobs | None], dict[int, Exception]]:
    """Next token of each row, its logprob under the model (NaN for rows that did not ask for one: a
    log-softmax over the vocabulary costs as much as sampling itself), the row's `top_logprobs` most likely
    tokens (None for rows that asked for none), and the error of each row that could not be sampled (its
    token is then meaningless), so that one row's failure is only its request's."""
    tokens = logits.argmax(dim=-1)
    errors: dict[int, Exception] = {}
    for row, p in enumerate(params):
        if not p.greedy:
            try:
                tokens[row] = _sample_row(logits[row], p, generators[row])
            except Exception as err:  # reported per row: the caller fails that request alone
                errors[row] = err
    wanted = [row for row, p in enumerate(params) if p.logprobs]
    chosen = [math.nan] * len(params)
    top: list[TopLogprobs | None] = [None] * len(params)
    if wanted:
        rows = torch.tensor(wanted, device=logits.device)
        scores = torch.log_softmax(logits.index_select(0, rows), dim=-1)
        picked = scores.gather(1, tokens.index_select(0, rows).unsqueeze(1))
        for row, value in zip(wanted, picked.squeeze(1).tolist(), strict=True):
            chosen[row] = value
        k = max(params[row].top_logprobs for row in wanted)
        if k:
            values, ids = torch.topk(scores, min(k, scores.shape[1]), dim=-1)
            for i, (row_ids, row_values) in enumerate(zip(ids.tolist(), values.tolist(), strict=True)):
                want = params[wanted[i]].top_logprobs
                if want:
                    top[wanted[i]] = (row_ids[:want], row_values[:want])
    return tokens.tolist(), chosen, top, errors


def _sample_row(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    # Shifted to a maximum of 0 first: dividing by a tiny temperature then gives large negative numbers
    # (or -inf), never +inf, and the top token keeps probability mass whatever top-k and top-p remove.
    scores = (logits - logits.max()) / p.temperature
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
