"""Several GRPO policies training at once on one resident base, against the same policies one after another.

    python -m bench.multipolicy            # SmolLM2-135M shape, then the tiny preset
    python -m bench.multipolicy --quick    # the tiny preset only, fewer steps
    python -m bench.multipolicy --device cuda --dtype bfloat16   # on a GPU

One EmbeddedStack per shape (engine and trainer configured below; each shape in a fresh process so one
shape's memory never shows in the other's RSS), driven through the SDK. A run is 4 policies x S steps of
`mint.recipes.grpo.run_grpo` (its default task, 4 prompts, G = 4, 32 new tokens, rank 16), each policy with a
fresh training session: `concurrent` starts the 4 recipes on 4 threads at once, `sequential` runs them one
after another. Each round runs sequential, concurrent, then one round of the ideal's measurements; the
fastest of each counts: speedup_x = sequential / concurrent. Peak RSS of each run is the kernel's high-water
mark, reset at its start over a trimmed heap (`bench.common.PeakRss`); peak_rss_ratio = concurrent
/ sequential (highest peak of each mode), under the trainer's per-pass token budget (--max-tokens-per-pass,
default the trainer's own). On a GPU (--device cuda) `peak_gpu_ratio` compares the peaks of allocated device
memory the same way.

The ideal: what batching the 4 policies' work buys on this base, measured in-process on the same engine and
trainer, with 4 fresh sessions' published adapters loaded.
    sampling: one GRPO step's rollouts (4 prompts x G = 4, 32 tokens, fixed length) for each policy on its own,
        4 engine passes one after another (S_sep), against all 4 policies' rollouts submitted together (S_comb);
    training: each policy's forward_backward (ppo) over those 16 rollouts alone, 4 trainer passes one after
        another (F_sep), against the 4 calls made at once so the trainer batches them (F_comb); the trainer's
        batch window (batch_window_s) is subtracted from every call, as it is waiting, not work.
    ideal_x = (S_sep + F_sep) / (S_comb + min(F_sep, F_comb))
A GRPO step is its sampling and its forward_backward, plus work no batching shortens (optim_step, publishing
a revision, rewards, RPCs); the ideal is the time-weighted gain over the two batchable phases, and it takes
the separate passes where one combined pass is slower (batching need never cost). efficiency = speedup_x /
ideal_x. `unbatched_share` = 1 - steps x (S_sep + F_sep) / sequential: the share of a sequential run outside
the two phases.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import random
import threading
import time
import traceback
from pathlib import Path

import torch

from bench.common import PeakRss, make_base, report, scratch_dir
from mint.recipes.common import prompt_tokens
from mint.recipes.grpo import GRPOConfig, run_grpo
from mint.recipes.tasks import RL_TASKS
from mint.sdk import SamplingParams, ServiceClient, TrainingClient, next_token_datum
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.engine.engine import collect
from services.trainer.config import TrainerConfig
from services.trainer.losses import LossRow

POLICIES, PROMPTS, GROUP, NEW_TOKENS, RANK = 4, 4, 4, 32, 16
TASK = GRPOConfig().task  # the recipe's default task
ENGINE = {"max_lora_rank": RANK, "max_slots": 2 * POLICIES, "kv_cache_bytes": 256 * 1024**2}
PPO = {"clip_low": 0.2, "clip_high": 0.28}


@dataclasses.dataclass(slots=True)
class Mode:
    seconds: list[float] = dataclasses.field(default_factory=list)
    peak_rss: list[int] = dataclasses.field(default_factory=list)
    peak_gpu: list[int] = dataclasses.field(default_factory=list)
    engine_steps: list[int] = dataclasses.field(default_factory=list)
    trainer_passes: list[int] = dataclasses.field(default_factory=list)


def grpo_config(steps: int, seed: int) -> GRPOConfig:
    return GRPOConfig(task=TASK, steps=steps, prompts_per_step=PROMPTS, group_size=GROUP, max_tokens=NEW_TOKENS, seed=seed)


def run_policies(
    service: ServiceClient, base_model: str, tokenizer, *, concurrent: bool, steps: int, tag: str, count: int = POLICIES
) -> tuple[float, PeakRss]:
    """Seconds and peak memory of `count` policies x `steps` GRPO steps, at once or one after another."""
    clients = [service.create_lora_training_client(base_model, f"mp-{tag}-{i}", rank=RANK, seed=i) for i in range(count)]
    errors: list[BaseException] = []

    def train(i: int) -> None:
        try:
            run_grpo(service, clients[i], tokenizer, grpo_config(steps, seed=i))
        except BaseException as err:  # re-raised below, once every thread is done
            errors.append(err)

    with PeakRss() as rss:
        start = time.perf_counter()
        if concurrent:
            threads = [threading.Thread(target=train, args=(i,)) for i in range(count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for i in range(count):
                train(i)
        elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    for client in clients:
        client.close()
    return elapsed, rss


# --- the ideal ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Ideal:
    """Best seconds seen of each side of the ideal's measurements."""

    sample_sep: float = float("inf")
    sample_comb: float = float("inf")
    fb_sep: float = float("inf")
    fb_comb: float = float("inf")
    fb_passes_comb: int = 0

    @property
    def ideal_x(self) -> float:
        # A trainer that gained nothing from one big pass would run the calls apart: batching never costs here.
        return (self.sample_sep + self.fb_sep) / (self.sample_comb + min(self.fb_sep, self.fb_comb))


def rollouts(engine, specs: list, prompts: list[list[int]], seed: int) -> list[list[tuple[list[int], list[int], list[float]]]]:
    """One GRPO step's rollouts for each spec, submitted together: per spec, (prompt, tokens, logprobs) x 16."""
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, n=GROUP, seed=seed, logprobs=True, ignore_eos=True)
    with engine.hold():
        requests = [[engine.sample(spec, prompt, params) for prompt in prompts] for spec in specs]
    out = []
    for spec_requests, _ in zip(requests, specs, strict=True):
        group = []
        for request, prompt in zip(spec_requests, prompts, strict=True):
            for event in collect(request, 3600).values():
                group.append((prompt, event.token_ids, event.logprobs))
        out.append(group)
    return out


def trainer_data(group: list[tuple[list[int], list[int], list[float]]], rng: random.Random) -> list[LossRow]:
    """ppo data as run_grpo builds it (advantages drawn at random: only their shape matters here)."""
    data = []
    for prompt, tokens, logprobs in group:
        sdk = next_token_datum(prompt, tokens, logprobs=logprobs, advantages=[rng.choice((-1.0, 1.0))] * len(tokens))
        inputs = sdk.loss_fn_inputs
        data.append(LossRow(sdk.tokens, list(inputs["target_tokens"]), inputs["weights"], inputs["logprobs"], inputs["advantages"]))
    return data


def forward_backward_s(trainer, sessions: list, data: list[list[LossRow]], *, together: bool) -> tuple[float, int]:
    """Seconds of the sessions' forward_backward calls (one after another, or all at once) minus the
    trainer's batch window per round of calls, and the number of passes the trainer ran."""
    window = trainer.config.batch_window_s
    passes = trainer.passes
    start = time.perf_counter()
    if together:
        threads = [threading.Thread(target=trainer.forward_backward, args=(s, d, "ppo", PPO)) for s, d in zip(sessions, data, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        waited = window
    else:
        for session, datums in zip(sessions, data, strict=True):
            trainer.forward_backward(session, datums, "ppo", PPO)
        waited = window * len(sessions)
    elapsed = time.perf_counter() - start - waited
    for session in sessions:
        session.optimizer.zero_grad(set_to_none=True)
    return elapsed, trainer.passes - passes


def measure_ideal(stack: EmbeddedStack, service: ServiceClient, tokenizer, ideal: Ideal, seed: int) -> None:
    """One round of separate against combined sampling and forward_backward, in-process on the stack's engine
    and trainer, for 4 fresh sessions whose published adapters are loaded first; keeps the best times."""
    clients: list[TrainingClient] = [service.create_lora_training_client(stack.base_model, f"mp-ideal-{seed}-{i}", rank=RANK, seed=i) for i in range(POLICIES)]
    engine, trainer = stack.engine, stack.trainer
    specs = [engine.spec(service.catalog.resolve(c.save_weights_for_sampler("ideal").address.removeprefix("mint://")).adapter) for c in clients]
    for spec in specs:
        engine.residency.prefetch(spec).result()
    sessions = [trainer.session(c.session_id) for c in clients]
    rng = random.Random(seed)
    prompts = [prompt_tokens(tokenizer, RL_TASKS[TASK].problems(rng).prompt) for _ in range(PROMPTS)]

    start = time.perf_counter()
    for spec in specs:
        rollouts(engine, [spec], prompts, seed)
    ideal.sample_sep = min(ideal.sample_sep, time.perf_counter() - start)
    start = time.perf_counter()
    groups = rollouts(engine, specs, prompts, seed)
    ideal.sample_comb = min(ideal.sample_comb, time.perf_counter() - start)
    data = [trainer_data(group, rng) for group in groups]
    ideal.fb_sep = min(ideal.fb_sep, forward_backward_s(trainer, sessions, data, together=False)[0])
    seconds, ideal.fb_passes_comb = forward_backward_s(trainer, sessions, data, together=True)
    ideal.fb_comb = min(ideal.fb_comb, seconds)
    for client in clients:
        client.close()


# --- one shape ----------------------------------------------------------------------------------------------------


def bench_shape(preset: str, workdir: Path, *, steps: int, rounds: int, trainer: dict, engine: dict) -> dict[str, float]:
    """Every measurement for one shape. Each round: a sequential run, a concurrent run, one ideal round."""
    make_base(workdir / preset, preset)
    stack = EmbeddedStack(
        EmbeddedConfig(
            model_path=str(workdir / preset), data_dir=str(workdir / f"stack-{preset}"), address="127.0.0.1:0",
            engine={**ENGINE, **engine}, trainer=trainer,
        )
    ).start()
    try:
        service = ServiceClient(stack.address, stack.admin_key)
        tokenizer = service.get_tokenizer()
        run_policies(service, stack.base_model, tokenizer, concurrent=False, steps=1, tag="warmup", count=1)
        modes = {"sequential": Mode(), "concurrent": Mode()}
        ideal = Ideal()
        for round_index in range(rounds):
            for name, mode in modes.items():
                steps_before, passes_before = stack.engine.steps, stack.trainer.passes
                seconds, peak = run_policies(service, stack.base_model, tokenizer, concurrent=name == "concurrent", steps=steps, tag=f"{name}-{round_index}")
                mode.seconds.append(seconds)
                mode.peak_rss.append(peak.peak_bytes)
                mode.peak_gpu.append(peak.peak_device_bytes)
                mode.engine_steps.append(stack.engine.steps - steps_before)
                mode.trainer_passes.append(stack.trainer.passes - passes_before)
                print(
                    f"  {preset} {name:<11}{seconds:8.2f} s  peak RSS {peak.peak_bytes / 2**30:.2f} GiB  engine steps {mode.engine_steps[-1]}  "
                    f"trainer passes {mode.trainer_passes[-1]}",
                    flush=True,
                )
            measure_ideal(stack, service, tokenizer, ideal, seed=round_index)
        service.close()
        fb_budget = stack.trainer.config.max_tokens_per_pass
    finally:
        stack.stop()
    return summarize(preset, modes, ideal, steps, fb_budget)


def bench_shape_isolated(preset: str, workdir: Path, **options) -> dict[str, float]:
    """`bench_shape` in a fresh process, so that one shape's memory never shows in the next one's RSS."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        metrics, failure = pool.apply(_bench_shape_reporting, (preset, workdir), options)
    if failure:
        raise RuntimeError(f"bench_shape({preset!r}) failed in its process:\n{failure}")
    return metrics


def _bench_shape_reporting(preset: str, workdir: Path, **options) -> tuple[dict[str, float], str]:
    """(metrics, "") or ({}, the traceback): an exception crosses back as text, because MintError does not
    survive unpickling and a result that cannot be unpickled leaves Pool.apply waiting forever."""
    try:
        return bench_shape(preset, workdir, **options), ""
    except Exception:
        return {}, traceback.format_exc()


def summarize(preset: str, modes: dict[str, Mode], ideal: Ideal, steps: int, fb_budget: int) -> dict[str, float]:
    sequential, concurrent = min(modes["sequential"].seconds), min(modes["concurrent"].seconds)
    speedup = sequential / concurrent
    metrics = {
        "sequential_s": sequential,
        "concurrent_s": concurrent,
        "speedup_x": speedup,
        "ideal_x": ideal.ideal_x,
        "efficiency": speedup / ideal.ideal_x,
        "peak_rss_ratio": max(modes["concurrent"].peak_rss) / max(modes["sequential"].peak_rss),
        "peak_rss_sequential_gib": max(modes["sequential"].peak_rss) / 2**30,
        "peak_rss_concurrent_gib": max(modes["concurrent"].peak_rss) / 2**30,
        "sample_ideal_x": ideal.sample_sep / ideal.sample_comb,
        "fb_ideal_x": ideal.fb_sep / ideal.fb_comb,
        "sample_sep_s": ideal.sample_sep,
        "sample_comb_s": ideal.sample_comb,
        "fb_sep_s": ideal.fb_sep,
        "fb_comb_s": ideal.fb_comb,
        "fb_passes_comb": float(ideal.fb_passes_comb),
        "unbatched_share": 1 - steps * (ideal.sample_sep + ideal.fb_sep) / sequential,
        "engine_steps_sequential": float(min(modes["sequential"].engine_steps)),
        "engine_steps_concurrent": float(min(modes["concurrent"].engine_steps)),
        "trainer_passes_sequential": float(min(modes["sequential"].trainer_passes)),
        "trainer_passes_concurrent": float(min(modes["concurrent"].trainer_passes)),
    }
    if max(modes["sequential"].peak_gpu):
        metrics["peak_gpu_ratio"] = max(modes["concurrent"].peak_gpu) / max(modes["sequential"].peak_gpu)
        metrics["peak_gpu_sequential_gib"] = max(modes["sequential"].peak_gpu) / 2**30
    print(f"\n{preset}: 4 policies x {steps} GRPO steps; trainer budget {fb_budget} tokens per pass")
    print(f"{'':<14}{'4 separate s':>14}{'combined s':>12}{'gain x':>9}")
    print(f"{'sampling':<14}{ideal.sample_sep:>14.3f}{ideal.sample_comb:>12.3f}{metrics['sample_ideal_x']:>9.2f}")
    print(f"{'fwd/bwd':<14}{ideal.fb_sep:>14.3f}{ideal.fb_comb:>12.3f}{metrics['fb_ideal_x']:>9.2f}   ({ideal.fb_passes_comb} passes combined)")
    print(f"{'GRPO runs':<14}{sequential:>14.2f}{concurrent:>12.2f}{speedup:>9.2f}   ideal {ideal.ideal_x:.2f}x, efficiency {metrics['efficiency']:.2f}")
    print(f"peak RSS: sequential {metrics['peak_rss_sequential_gib']:.2f} GiB, concurrent {metrics['peak_rss_concurrent_gib']:.2f} GiB\n")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=0, help="GRPO steps per policy")
    parser.add_argument("--rounds", type=int, default=0, help="runs of each mode, alternating")
    parser.add_argument("--max-tokens-per-pass", type=int, default=0, help="the trainer's per-pass token budget (0: its default)")
    parser.add_argument("--device", default="cpu", help="where the engine and trainer run: cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="the base model's dtype")
    args = parser.parse_args()
    placement = {"device": args.device, "dtype": args.dtype}
    trainer = placement | ({"max_tokens_per_pass": args.max_tokens_per_pass} if args.max_tokens_per_pass else {})
    presets = ("tiny",) if args.quick else ("smollm2-shape", "tiny")
    steps = args.steps or (2 if args.quick else 3)
    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    with scratch_dir() as tmp:
        for preset in presets:
            rounds = args.rounds or (2 if preset == "tiny" else 1)
            results[preset] = bench_shape_isolated(preset, Path(tmp), steps=steps, rounds=rounds, trainer=trainer, engine=placement)
    metrics: dict[str, float] = {}
    if "smollm2-shape" in results:
        metrics.update(results["smollm2-shape"])
    metrics.update({f"{key}_tiny": value for key, value in results["tiny"].items()})
    params = {"presets": list(presets), "policies": POLICIES, "steps": steps, "prompts": PROMPTS, "group_size": GROUP, "new_tokens": NEW_TOKENS, "rank": RANK,
              "max_tokens_per_pass": args.max_tokens_per_pass or TrainerConfig(model_path="").max_tokens_per_pass, **placement}
    report("multipolicy", params, metrics)


if __name__ == "__main__":
    main()
