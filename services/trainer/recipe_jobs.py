"""Recipe jobs (RunRecipe): a recipe from mint.recipes run as the caller, its reports streamed back.

A request is turned into a checked plan (`plan_recipe`) before the job starts, so a bad one is refused with
INVALID_ARGUMENT instead of failing part way. SFT data is the caller's, carried in the request: the trainer
never reads a path it is given.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading

from mint.errors import Code, MintError, invalid
from mint.proto import trainer_pb2
from mint.recipes.grpo import GRPOConfig, run_grpo
from mint.recipes.sft import SFTConfig, run_sft
from mint.recipes.tasks import REWARDS, RL_TASKS, Example, parse_examples, sft_examples
from mint.sdk import ServiceClient

# Bounds on a job's size: enough for any run a person means to start, small enough that a typo does not
# hold the trainer for days.
MAX_STEPS = 100_000
MAX_BATCH_SIZE = 1024
MAX_PROMPTS_PER_STEP = 256
MAX_GROUP_SIZE = 64  # samples of one prompt: one sampling request's n
MAX_NEW_TOKENS = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class SftPlan:
    config: SFTConfig
    examples: list[Example]


@dataclasses.dataclass(frozen=True, slots=True)
class GrpoPlan:
    config: GRPOConfig


def plan_recipe(request: trainer_pb2.RunRecipeRequest, max_data_bytes: int) -> SftPlan | GrpoPlan:
    """The recipe a request asks for, every setting checked (0 takes the default)."""
    kind = request.WhichOneof("recipe")
    if kind == "sft":
        r = request.sft
        if bool(r.builtin_task) == bool(r.examples_jsonl):
            raise invalid("an sft recipe takes either builtin_task or examples_jsonl (the caller's examples), not both or neither")
        if len(r.examples_jsonl) > max_data_bytes:
            raise invalid(f"sft.examples_jsonl is {len(r.examples_jsonl)} bytes; the limit is {max_data_bytes} (max_recipe_data_bytes)")
        examples = sft_examples(r.builtin_task) if r.builtin_task else parse_examples(r.examples_jsonl, "sft.examples_jsonl")
        steps = _count("sft.steps", r.steps, 100, MAX_STEPS)
        config = SFTConfig(
            steps=steps, batch_size=_count("sft.batch_size", r.batch_size, 4, MAX_BATCH_SIZE),
            learning_rate=_rate("sft.learning_rate", r.learning_rate, 1e-3), publish_every=_count("sft.publish_every", r.publish_every, 0, steps),
        )
        return SftPlan(config, examples)
    if kind == "grpo":
        r = request.grpo
        task = r.task or "brevity"
        if task not in RL_TASKS:
            raise invalid(f"unknown RL task {task!r}; built-in tasks: {sorted(RL_TASKS)}")
        if r.reward_fn and r.reward_fn not in REWARDS:
            raise invalid(f"unknown reward function {r.reward_fn[:64]!r}; registered: {sorted(REWARDS)}")
        if not (math.isfinite(r.temperature) and r.temperature >= 0):
            raise invalid(f"grpo.temperature is {r.temperature}; it must be a finite number >= 0 (0: 1.0)")
        if not (math.isfinite(r.clip_eps) and 0 <= r.clip_eps < 1):
            raise invalid(f"grpo.clip_eps is {r.clip_eps}; it must be in [0, 1) (0: 0.2)")
        for name, value in (("clip_eps_high", r.clip_eps_high), ("kl_coef", r.kl_coef)):
            if not (math.isfinite(value) and value >= 0):
                raise invalid(f"grpo.{name} is {value}; it must be a finite number >= 0")
        config = GRPOConfig(
            task=task, reward_fn=r.reward_fn, steps=_count("grpo.steps", r.steps, 10, MAX_STEPS),
            prompts_per_step=_count("grpo.prompts_per_step", r.prompts_per_step, 4, MAX_PROMPTS_PER_STEP),
            group_size=_count("grpo.group_size", r.group_size, 4, MAX_GROUP_SIZE), max_tokens=_count("grpo.max_tokens", r.max_tokens, 32, MAX_NEW_TOKENS),
            temperature=r.temperature or 1.0, learning_rate=_rate("grpo.learning_rate", r.learning_rate, 1e-3), clip_eps=r.clip_eps or 0.2,
            clip_eps_high=r.clip_eps_high or 0.28, kl_coef=r.kl_coef, normalize_std=r.normalize_std,
        )
        return GrpoPlan(config)
    raise invalid("RunRecipe needs an sft or a grpo recipe")


def _count(name: str, value: int, default: int, maximum: int) -> int:
    if not 0 <= value <= maximum:
        raise invalid(f"{name} is {value}; it must be in 0..{maximum} (0: {default})")
    return value or default


def _rate(name: str, value: float, default: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise invalid(f"{name} is {value}; it must be in (0, 1] (0: {default:g})")
    return value or default


class _Cancelled(Exception):
    pass


_END = object()  # the job's thread is done: the stream ends (after any error it reported)


class RecipeJob:
    def __init__(self, gateway_address: str, api_key: str, session: trainer_pb2.CreateSessionRequest, plan: SftPlan | GrpoPlan):
        self.gateway_address = gateway_address
        self.api_key = api_key
        self.session = session
        self.plan = plan
        self._events: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self):
        threading.Thread(target=self._work, name="recipe-job", daemon=True).start()
        while (item := self._events.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _work(self) -> None:
        service = ServiceClient(self.gateway_address, self.api_key)
        try:
            self._run_recipe(service)
        except _Cancelled:
            pass
        except MintError as err:
            self._events.put(err)
        except Exception as err:  # a recipe bug is reported to the caller, not swallowed
            self._events.put(MintError(Code.INTERNAL, f"recipe failed: {err}"))
        finally:  # a cancelled job, or one that ends early, must not leave the streaming call waiting forever
            service.close()
            self._events.put(_END)

    def _run_recipe(self, service: ServiceClient) -> None:
        s = self.session
        client = service.create_lora_training_client(
            s.base_model, s.policy, rank=s.rank or 16, alpha=s.alpha, train_attn=s.train_attn or not s.train_mlp,
            train_mlp=s.train_mlp, seed=s.seed, use_rslora=s.use_rslora,
        )
        tokenizer = service.get_tokenizer()
        plan = self.plan
        total = plan.config.steps
        if isinstance(plan, SftPlan):
            run_sft(client, tokenizer, plan.examples, plan.config, lambda rep: self._report(client, rep, total))
        else:
            run_grpo(service, client, tokenizer, plan.config, lambda rep: self._report(client, rep, total))

    def _report(self, client, report, total: int) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        self._events.put(
            trainer_pb2.RecipeProgress(
                session_id=client.session_id, step=report.step, total_steps=total, metrics=report.metrics,
                published_address=report.published, done=report.step == total,
            )
        )
