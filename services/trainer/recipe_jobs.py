"""Recipe jobs (RunRecipe): a recipe from mint.recipes run as the caller, its reports streamed back."""

from __future__ import annotations

import queue
import threading

from mint.errors import Code, MintError
from mint.proto import trainer_pb2
from mint.recipes.grpo import GRPOConfig, run_grpo
from mint.recipes.sft import SFTConfig, run_sft
from mint.recipes.tasks import sft_examples
from mint.sdk import ServiceClient


class _Cancelled(Exception):
    pass


_END = object()  # the job's thread is done: the stream ends (after any error it reported)


class RecipeJob:
    def __init__(self, gateway_address: str, api_key: str, request: trainer_pb2.RunRecipeRequest):
        self.gateway_address = gateway_address
        self.api_key = api_key
        self.request = request
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
        request = self.request
        s = request.session
        client = service.create_lora_training_client(
            s.base_model, s.policy, rank=s.rank or 16, alpha=s.alpha, train_attn=s.train_attn or not s.train_mlp,
            train_mlp=s.train_mlp, seed=s.seed, use_rslora=s.use_rslora,
        )
        tokenizer = service.get_tokenizer()
        if request.WhichOneof("recipe") == "sft":
            r = request.sft
            config = SFTConfig(steps=r.steps or 100, batch_size=r.batch_size or 4, learning_rate=r.learning_rate or 1e-3, publish_every=r.publish_every)
            total = config.steps
            run_sft(client, tokenizer, sft_examples(r.builtin_task, r.data_path), config, lambda rep: self._report(client, rep, total))
        else:
            r = request.grpo
            config = GRPOConfig(
                task=r.task or "brevity", reward_fn=r.reward_fn, steps=r.steps or 10, prompts_per_step=r.prompts_per_step or 4,
                group_size=r.group_size or 4, max_tokens=r.max_tokens or 32, temperature=r.temperature or 1.0,
                learning_rate=r.learning_rate or 1e-3, clip_eps=r.clip_eps or 0.2, clip_eps_high=r.clip_eps_high or 0.28,
                kl_coef=r.kl_coef, normalize_std=r.normalize_std,
            )
            total = config.steps
            run_grpo(service, client, tokenizer, config, lambda rep: self._report(client, rep, total))

    def _report(self, client, report, total: int) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        self._events.put(
            trainer_pb2.RecipeProgress(
                session_id=client.session_id, step=report.step, total_steps=total, metrics=report.metrics,
                published_address=report.published, done=report.step == total,
            )
        )
