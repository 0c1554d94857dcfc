"""Supervised fine-tuning: cross-entropy on completion tokens only, read top to bottom like nanoGPT's loop.

    for step in range(steps):
        batch = next examples (cycling, shuffled each epoch)
        forward_backward(batch, "cross_entropy") with weights 1 on completion tokens, normalized per batch
        optim_step(lr(step))          # linear warmup then cosine decay: a pure function of the step
        every publish_every steps: save_weights_for_sampler
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence

from mint.models.tokenizer import Tokenizer
from mint.recipes.common import StepReport, completion_tokens, prompt_tokens, require
from mint.recipes.tasks import Example
from mint.sdk import AdamParams, Datum, TrainingClient, next_token_datum


@dataclasses.dataclass(frozen=True, slots=True)
class SFTConfig:
    steps: int = 100
    batch_size: int = 4
    learning_rate: float = 1e-3
    warmup_steps: int = 5
    publish_every: int = 0  # 0: publish once, at the end
    seed: int = 0

    def __post_init__(self):
        require("steps", self.steps, self.steps >= 1, "at least 1")
        require("batch_size", self.batch_size, self.batch_size >= 1, "at least 1")
        require("learning_rate", self.learning_rate, 0 < self.learning_rate <= 1, "in (0, 1]")  # nan fails every comparison
        require("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, "at least 0")
        require("publish_every", self.publish_every, 0 <= self.publish_every <= self.steps, f"in 0..{self.steps} (0: only at the end)")


def learning_rate(step: int, config: SFTConfig) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(step: int, config: SFTConfig, num_examples: int) -> list[int]:
    """The examples of a step: epochs of a seeded shuffle, a pure function of the step, so a run resumed
    at step k sees exactly the batches the original run would have."""
    size = min(config.batch_size, num_examples)
    orders: dict[int, list[int]] = {}  # a step spans at most two epochs: shuffle each once
    out = []
    for position in range(step * size, (step + 1) * size):
        epoch, index = divmod(position, num_examples)
        if epoch not in orders:
            orders[epoch] = list(range(num_examples))
            random.Random(config.seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][index])
    return out


def sft_data(tokenizer: Tokenizer, examples: Sequence[Example]) -> list[Datum]:
    data = []
    for example in examples:
        datum = next_token_datum(prompt_tokens(tokenizer, example.prompt), completion_tokens(tokenizer, example.completion))
        data.append(datum)
    return data


def run_sft(
    client: TrainingClient,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    config: SFTConfig,
    on_step: Callable[[StepReport], None] = lambda report: None,
    start_step: int = 0,
) -> list[StepReport]:
    """Train from `start_step` (after load_state, the step it saved at) to config.steps."""
    data = sft_data(tokenizer, examples)
    reports = []
    for step in range(start_step, config.steps):
        started = time.perf_counter()
        picked = [data[i] for i in batch_indices(step, config, len(data))]
        # The trainer sums token losses; weights of 1/n make the loss the mean over completion tokens.
        n = sum(sum(d.loss_fn_inputs["weights"]) for d in picked)
        batch = [Datum(d.tokens, {**d.loss_fn_inputs, "weights": [w / n for w in d.loss_fn_inputs["weights"]]}) for d in picked]
        output = client.forward_backward(batch, "cross_entropy")
        client.optim_step(AdamParams(learning_rate=learning_rate(step, config)))
        tokens = sum(len(d.tokens) for d in batch)
        report = StepReport(
            step=step + 1,
            metrics={"loss": output.metrics["loss"], "tokens_per_s": tokens / (time.perf_counter() - started), "lr": learning_rate(step, config)},
        )
        last = step + 1 == config.steps
        if (config.publish_every and (step + 1) % config.publish_every == 0) or last:
            report.published = client.save_weights_for_sampler(f"sft-step-{step + 1}", {"loss": report.metrics["loss"]}).address
        reports.append(report)
        on_step(report)
    return reports
