"""GRPO on the public primitives. Rollouts come from an engine serving the latest published revision: the
trainer hands the engine only the adapter (publish, then sample by address), never a merged model.

    publish the current weights; sampler = that revision
    for step in range(steps):
        prompts = task problems; for each, G samples from the sampler (with logprobs)
        rewards; advantages = reward - group mean (optionally / group std), spread over each answer's tokens
        optional k3 KL to the base (the base is slot 0 on the engine: scored without a reference copy)
        forward_backward(ppo, clip = [1 - eps, 1 + eps_high]); optim_step; publish -> next sampler
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mint.errors import invalid
from mint.models.tokenizer import Tokenizer
from mint.recipes.common import StepReport, prompt_tokens, require
from mint.recipes.tasks import REWARDS, RL_TASKS
from mint.sdk import AdamParams, SamplingParams, ServiceClient, TrainingClient, next_token_datum


@dataclasses.dataclass(frozen=True, slots=True)
class GRPOConfig:
    task: str = "brevity"
    reward_fn: str = ""  # default: the task's own
    steps: int = 10
    prompts_per_step: int = 4
    group_size: int = 4
    max_tokens: int = 32
    temperature: float = 1.0
    learning_rate: float = 1e-3
    clip_eps: float = 0.2
    clip_eps_high: float = 0.28
    kl_coef: float = 0.0
    normalize_std: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.task not in RL_TASKS:
            raise invalid(f"unknown RL task {self.task!r}; built-in tasks: {sorted(RL_TASKS)}")
        if self.reward_fn and self.reward_fn not in REWARDS:
            raise invalid(f"unknown reward function {self.reward_fn[:64]!r}; registered: {sorted(REWARDS)}")
        for name in ("steps", "prompts_per_step", "group_size", "max_tokens"):
            require(name, getattr(self, name), getattr(self, name) >= 1, "at least 1")
        require("learning_rate", self.learning_rate, 0 < self.learning_rate <= 1, "in (0, 1]")  # nan fails every comparison
        require("clip_eps", self.clip_eps, 0 <= self.clip_eps < 1, "in [0, 1)")
        for name in ("temperature", "clip_eps_high", "kl_coef"):
            value = getattr(self, name)
            require(name, value, math.isfinite(value) and value >= 0, "a finite number >= 0")


def group_advantages(rewards: list[float], normalize_std: bool) -> list[float]:
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards) if normalize_std else 1.0
    return [(r - mean) / (std + 1e-6) for r in rewards]


def sample_groups(sampler, prompts: list[list[int]], group_size: int, params: SamplingParams) -> list[list]:
    """G samples of every prompt, all requests in flight at once so the engine batches them together."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(sampler.sample, p, group_size, params) for p in prompts]
        return [f.result().sequences for f in futures]


def run_grpo(
    service: ServiceClient,
    client: TrainingClient,
    tokenizer: Tokenizer,
    config: GRPOConfig,
    on_step: Callable[[StepReport], None] = lambda report: None,
) -> list[StepReport]:
    task = RL_TASKS[config.task]
    reward_fn = REWARDS[config.reward_fn or task.reward]
    rng = random.Random(config.seed)
    base = service.create_sampling_client(base_model=client.base_model)
    sampler = client.save_weights_and_get_sampling_client("grpo-step-0")
    reports = []
    for step in range(config.steps):
        started = time.perf_counter()
        problems = [task.problems(rng) for _ in range(config.prompts_per_step)]
        params = SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=rng.randrange(2**31), logprobs=True)
        prompts = [prompt_tokens(tokenizer, p.prompt) for p in problems]
        groups = sample_groups(sampler, prompts, config.group_size, params)
        data, rewards, kls, generated = [], [], [], 0
        for problem, prompt, samples in zip(problems, prompts, groups, strict=True):
            group_rewards = [reward_fn(problem.prompt, s.text, problem.answer) for s in samples]
            rewards += group_rewards
            ref = base.compute_logprobs([prompt + s.tokens for s in samples]) if config.kl_coef else None
            for i, (sample, advantage) in enumerate(zip(samples, group_advantages(group_rewards, config.normalize_std), strict=True)):
                if not sample.tokens:
                    continue
                generated += len(sample.tokens)
                # GRPO's objective averages each sample's tokens, then the samples: long answers do not
                # outweigh short ones just by having more tokens.
                weight = 1.0 / (len(sample.tokens) * len(problems) * config.group_size)
                per_token = [advantage * weight] * len(sample.tokens)
                if ref is not None:
                    # k3 = exp(ref - logp) - (ref - logp) - 1; its gradient in logp, folded into the advantages.
                    ref_lp = ref[i][len(prompt) - 1 :]
                    # Clamped: one token the base finds far likelier must not swamp the reward signal.
                    deltas = [max(-10.0, min(10.0, r - lp)) for r, lp in zip(ref_lp, sample.logprobs, strict=True)]
                    kls += [math.exp(d) - d - 1 for d in deltas]
                    per_token = [a - weight * config.kl_coef * (1 - math.exp(d)) for a, d in zip(per_token, deltas, strict=True)]
                data.append(next_token_datum(prompt, sample.tokens, logprobs=sample.logprobs, advantages=per_token))
        metrics = {"reward_mean": statistics.fmean(rewards), "reward_std": statistics.pstdev(rewards), "kl": statistics.fmean(kls) if kls else 0.0}
        if data:
            output = client.forward_backward(data, "ppo", {"clip_low": config.clip_eps, "clip_high": config.clip_eps_high})
            client.optim_step(AdamParams(learning_rate=config.learning_rate, grad_clip_norm=1.0))
            metrics["loss"] = output.metrics["loss"]
        published = client.save_weights_for_sampler(f"grpo-step-{step + 1}", metrics)
        sampler = service.create_sampling_client(published.address)
        metrics["tokens_per_s"] = generated / (time.perf_counter() - started)
        report = StepReport(step=step + 1, metrics=metrics, published=published.address)
        reports.append(report)
        on_step(report)
    return reports
