"""The trainer: one frozen base, many sessions, and passes that batch sessions together.

forward_backward (and forward) calls are queued; a worker takes every call that arrives within a short
window and runs them as one base forward/backward over all their sequences packed back to back, each token
carrying its session's slot. The loss of the pass is the sum of the calls' losses, so each session's
gradient is exactly what its own call alone would give. A per-pass token budget splits large batches, which
keeps peak memory flat however many sessions join.

One call must never fail the calls it was batched with. Every call is checked whole before it joins a
batch (`LossRow.check`); a call whose loss still comes out non-finite fails alone and adds no gradient; and a
pass that raises is run again call by call, so only the call that causes the failure sees it. Gradients
reach the sessions only once a pass's backward has completed, so a pass run again adds them once.

Sessions are reaped: one that no call has used for `session_idle_s` is closed as CloseSession closes it
(parameters, gradients and optimizer moments freed), by a sweep every so often and whenever its tenant
reaches `max_sessions_per_tenant`. A session with a call in flight is never reaped. A tenant at its cap is
refused rather than losing its least recently used session: a client that still means to use a session
gets an explicit error, never a session gone from under it. A reaped session's id answers NOT_FOUND saying
so, and its saved states stay on disk for LoadState into a new session.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from mint.adapters import AdapterConfig, AdapterWeights
from mint.errors import Code, MintError, invalid, not_found
from mint.models.attention import VarlenAttention
from mint.models.loading import load_model
from mint.models.tokenizer import TOKENIZER_FILE, no_tokenizer
from mint.names import check_name
from mint.params import AdamParams
from mint.runtime import compute_threads, release_workers
from services.scheduler.quotas import SESSIONS, QuotaLimiter, Slot
from services.trainer.config import TrainerConfig
from services.trainer.lora import LoRAPass, TrainableLoRA
from services.trainer.losses import LossRow, check_loss, datum_loss
from services.trainer.session import Session, target_modules

log = logging.getLogger(__name__)

REMEMBERED_REAPED = 10_000  # reaped session ids that still answer why they are gone (older ones: plain NOT_FOUND)


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    address: str  # mint://tenant/policy@N
    number: int
    adapter: object  # mint.v1.AdapterRef


class Publisher(Protocol):
    """Publishes a session's adapter as the policy's next revision (idempotent per name), on behalf of the
    key `on_behalf_of` (a key id) that asked for it: the catalog's audit log names that key."""

    def publish(
        self, session: Session, weights: AdapterWeights, name: str, metrics: dict[str, float], on_behalf_of: str | None
    ) -> Published: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Reaped:
    """What a reaped session's id still answers."""

    tenant: str
    idle_s: float
    last_saved: str | None

    def error(self, session_id: str) -> MintError:
        saved = f"the last one it saved is {self.last_saved}" if self.last_saved else "it saved none"
        return not_found(
            f"training session {session_id!r} was reaped after {self.idle_s:.0f} s idle (session_idle_s, "
            f"MINT_TRAINER_SESSION_IDLE_S); its saved states can be loaded into a new session with LoadState ({saved})"
        )


@dataclasses.dataclass(slots=True)
class PassResult:
    logprobs: list[list[float]]
    metrics: dict[str, float]


@dataclasses.dataclass(slots=True, eq=False)  # compared and hashed by identity
class _Call:
    session: Session
    data: list[LossRow]
    loss_fn: str
    loss_config: dict[str, float]
    backward: bool
    first_index: int = 0  # the index of data[0] in the call as sent (a part of a split call starts later)
    whole: _Call | None = None  # for a part of a split call: the call it is part of
    # For a split call: its session's gradients before its first part ran, put back if any part fails.
    grads_before: list[torch.Tensor | None] | None = None
    future: Future = dataclasses.field(default_factory=Future)

    @property
    def num_tokens(self) -> int:
        return sum(len(d.tokens) for d in self.data)


class Trainer:
    def __init__(
        self, config: TrainerConfig, publisher: Publisher | None = None, *, clock: Callable[[], float] | None = None,
        quotas: QuotaLimiter | None = None,
    ):
        """`clock` measures sessions' idle time in seconds. By default it is `time.monotonic` and a thread sweeps
        idle sessions; a caller's own clock (a test's fake one) passes time when the caller says, so the caller
        sweeps, with `reap_idle`. `quotas`: tenants' max_concurrent_sessions (catalog limits), counted across
        every trainer sharing its backend; max_sessions_per_tenant is this trainer's own cap besides."""
        self.config = config
        self.quotas = quotas
        self._slots: dict[str, Slot] = {}  # session id -> its tenant's session slot (quotas)
        self.clock = clock or time.monotonic
        self.device = torch.device(config.device)
        model = load_model(config.model_path, dtype=config.torch_dtype, device=self.device)
        self.model = model
        self.model_config = model.config
        self.base_model = config.base_model or Path(config.model_path).name
        self.lora = TrainableLoRA(model)
        for layer in model.layers:
            layer.register_forward_pre_hook(_rebalance_between_layers)
        self.publisher = publisher
        self.sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()  # the table, and each session's closed, last_used and in_flight
        self._reaped: OrderedDict[str, Reaped] = OrderedDict()
        self._closing = threading.Event()
        self._queue: list[_Call] = []
        self._cond = threading.Condition()
        self._stop = False
        self.passes = 0
        self._worker = threading.Thread(target=self._loop, name="trainer-passes", daemon=True)
        self._worker.start()
        self._reaper = threading.Thread(target=self._reap_loop, name="trainer-reaper", daemon=True)
        if config.session_idle_s and clock is None:
            self._reaper.start()
        release_workers()  # the model is built: the pass thread is the one to hold OpenMP workers

    def close(self) -> None:
        self._closing.set()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=30)
        if self._reaper.is_alive():
            self._reaper.join(timeout=30)

    def tokenizer_files(self) -> dict[str, str]:
        """The text files a client needs to rebuild the base's tokenizer (Tokenizer.from_dir); FAILED_PRECONDITION
        when the base has none (it trains on token ids all the same)."""
        root = Path(self.config.model_path)
        if not (root / TOKENIZER_FILE).is_file():
            raise no_tokenizer(self.base_model, root)
        names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "config.json")
        return {name: (root / name).read_text() for name in names if (root / name).is_file()}

    # --- sessions ------------------------------------------------------------------------------------------

    def session_config(
        self, *, policy: str, rank: int, alpha: float, train_attn: bool, train_mlp: bool, use_rslora: bool, base_model: str
    ) -> AdapterConfig:
        """The adapter a session with these settings trains, every setting checked (nothing is created)."""
        check_name("policy", policy)
        if base_model and base_model != self.base_model:
            raise invalid(f"this trainer holds base {self.base_model!r}, not {base_model!r}")
        if not 1 <= rank <= self.config.max_rank:
            raise invalid(f"rank must be in 1..{self.config.max_rank}, got {rank}")
        return AdapterConfig(
            r=rank, lora_alpha=alpha or float(rank), target_modules=target_modules(train_attn, train_mlp),
            use_rslora=use_rslora, base_model_name_or_path=self.base_model,
        )

    def create_session(
        self, *, tenant: str, policy: str, rank: int, alpha: float = 0.0, train_attn: bool = True, train_mlp: bool = True,
        seed: int = 0, use_rslora: bool = False, base_model: str = "", created_by: str | None = None,
    ) -> Session:
        """`created_by`: the id of the key that asked for the session (its publishes are made on its behalf)."""
        config = self.session_config(
            policy=policy, rank=rank, alpha=alpha, train_attn=train_attn, train_mlp=train_mlp, use_rslora=use_rslora, base_model=base_model
        )
        self.make_room(tenant)  # before the parameters are allocated
        session = Session(
            tenant=tenant, policy=policy, base_model=self.base_model, config=config, model_config=self.model_config,
            seed=seed, device=self.device, dtype=self.config.torch_dtype, created_by=created_by,
        )
        slot = self.quotas.hold(SESSIONS, tenant) if self.quotas is not None else None
        try:
            with self._sessions_lock:
                self._make_room(tenant)  # again: other sessions of the tenant may have been created meanwhile
                session.last_used = self.clock()
                self.sessions[session.session_id] = session
                if slot is not None:
                    self._slots[session.session_id] = slot
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        return session

    def session(self, session_id: str, tenant: str | None = None) -> Session:
        """The open session `session_id` (of `tenant`, when given); looking it up counts as using it."""
        with self._sessions_lock:
            session = self.sessions.get(session_id)
            if session is None or session.closed or (tenant is not None and session.tenant != tenant):
                raise self._missing(session_id, tenant)
            session.last_used = self.clock()
            return session

    def close_session(self, session: Session) -> None:
        with self._sessions_lock:
            self._close(session)

    def make_room(self, tenant: str) -> None:
        """Refuse (RESOURCE_EXHAUSTED) when `tenant` holds max_sessions_per_tenant open sessions, after reaping
        its sessions idle past session_idle_s."""
        with self._sessions_lock:
            self._make_room(tenant)
        if self.quotas is not None:
            self.quotas.check(SESSIONS, tenant)

    def reap_idle(self, tenant: str | None = None) -> list[str]:
        """Close every session (of `tenant`, or of all) that no call has used for more than session_idle_s and
        that has no call in flight; returns their ids."""
        with self._sessions_lock:
            return self._reap(tenant)

    def _reap_loop(self) -> None:
        # A session is reaped at most a tenth of its idle time late (and within a minute); the sweep is a
        # scan of the table, cheap next to any pass.
        period = min(60.0, max(1.0, self.config.session_idle_s / 10))
        while not self._closing.wait(period):
            self.reap_idle()

    def _reap(self, tenant: str | None) -> list[str]:
        ttl = self.config.session_idle_s
        if not ttl:
            return []
        now = self.clock()
        idle = [
            s for s in self.sessions.values()
            if (tenant is None or s.tenant == tenant) and not s.in_flight and now - s.last_used > ttl
        ]
        for session in idle:
            self._close(session)
            self._reaped[session.session_id] = Reaped(session.tenant, now - session.last_used, session.last_saved)
            log.info(
                "reaped training session %s of %s after %.0f s idle (MINT_TRAINER_SESSION_IDLE_S=%g); last saved state: %s",
                session.session_id, session.full_policy, now - session.last_used, ttl, session.last_saved or "none",
            )
        while len(self._reaped) > REMEMBERED_REAPED:
            self._reaped.popitem(last=False)
        return [s.session_id for s in idle]

    def _make_room(self, tenant: str) -> None:
        cap = self.config.max_sessions_per_tenant
        if self._open_sessions(tenant) < cap:
            return
        self._reap(tenant)
        open_now = self._open_sessions(tenant)
        if open_now < cap:
            return
        ttl = self.config.session_idle_s
        frees = (
            f"or wait until one has been idle for {ttl:g} s (MINT_TRAINER_SESSION_IDLE_S), when it is reaped" if ttl
            else "(sessions are never reaped for being idle here: MINT_TRAINER_SESSION_IDLE_S=0)"
        )
        raise MintError(
            Code.RESOURCE_EXHAUSTED,
            f"tenant {tenant} has {open_now} open training sessions on this trainer, the limit (max_sessions_per_tenant, "
            f"MINT_TRAINER_MAX_SESSIONS_PER_TENANT={cap}); close one (CloseSession) {frees}",
        )

    def _open_sessions(self, tenant: str) -> int:
        return sum(1 for s in self.sessions.values() if s.tenant == tenant)

    def _close(self, session: Session) -> None:
        """Close `session` (under the sessions lock); its tensors go once its calls in flight have returned."""
        session.closed = True
        self.sessions.pop(session.session_id, None)
        slot = self._slots.pop(session.session_id, None)
        if slot is not None:
            slot.release()
        if not session.in_flight:
            session.release()

    def _missing(self, session_id: str, tenant: str | None) -> MintError:
        reaped = self._reaped.get(session_id)
        if reaped is not None and (tenant is None or reaped.tenant == tenant):
            return reaped.error(session_id)
        return not_found(f"training session {session_id!r} not found (or closed)")

    @contextmanager
    def _in_use(self, session: Session) -> Iterator[None]:
        """Hold `session` for one call: it is not reaped meanwhile, and the call counts as a use of it."""
        with self._sessions_lock:
            if session.closed:
                raise self._missing(session.session_id, session.tenant)
            session.in_flight += 1
            session.last_used = self.clock()
        try:
            yield
        finally:
            with self._sessions_lock:
                session.in_flight -= 1
                session.last_used = self.clock()
                if session.closed and not session.in_flight:
                    session.release()

    # --- primitives ------------------------------------------------------------------------------------------

    def forward_backward(self, session: Session, data: list[LossRow], loss_fn: str, loss_config: dict[str, float] | None = None) -> PassResult:
        with self._in_use(session):
            return self._submit(session, data, loss_fn, loss_config or {}, backward=True)

    def forward(self, session: Session, data: list[LossRow], loss_fn: str = "cross_entropy", loss_config: dict[str, float] | None = None) -> PassResult:
        with self._in_use(session):
            return self._submit(session, data, loss_fn, loss_config or {}, backward=False)

    def optim_step(self, session: Session, params: AdamParams) -> dict[str, float]:
        with self._in_use(session), session.lock:
            return session.optim_step(params)

    def save_weights_for_sampler(
        self, session: Session, name: str = "", metrics: dict[str, float] | None = None, requested_by: str | None = None
    ) -> Published:
        """Publish on behalf of `requested_by`, the id of the key that asked (default: the session's creator)."""
        if self.publisher is None:
            raise MintError(Code.FAILED_PRECONDITION, "this trainer has no catalog to publish to")
        with self._in_use(session):
            with session.lock:
                weights = session.adapter_weights()
            published = self.publisher.publish(session, weights, name or f"step-{session.step}", metrics or {}, requested_by or session.created_by)
            session.last_published = published.number
            return published

    def save_state(self, session: Session, name: str) -> str:
        check_name("state", name)
        path = Path(self.config.state_dir) / session.tenant / session.policy / f"{name}.safetensors"
        with self._in_use(session), session.lock:
            session.save_state(path)
            session.last_saved = str(path)
        return str(path)

    def load_state(self, session: Session, path: str, with_optimizer: bool) -> None:
        resolved = Path(path).resolve()
        root = (Path(self.config.state_dir) / session.tenant).resolve()
        if root not in resolved.parents:
            raise invalid(f"state path {path!r} is not one of tenant {session.tenant}'s saved states")
        with self._in_use(session), session.lock:
            session.load_state(resolved, with_optimizer=with_optimizer)

    # --- batched passes --------------------------------------------------------------------------------------

    def _submit(self, session: Session, data: list[LossRow], loss_fn: str, loss_config: dict[str, float], *, backward: bool) -> PassResult:
        check_loss(loss_fn, loss_config)
        if not data:
            raise invalid("forward_backward needs at least one datum")
        for index, datum in enumerate(data):
            datum.check(loss_fn, self.model_config.vocab_size, index)
            if len(datum.tokens) > self.config.max_tokens_per_pass:
                raise invalid(
                    f"datum {index} has {len(datum.tokens)} tokens; the limit is {self.config.max_tokens_per_pass} (max_tokens_per_pass)"
                )
        call = _Call(session, data, loss_fn, loss_config, backward)
        if call.num_tokens > self.config.max_tokens_per_call:
            raise invalid(f"the call's data hold {call.num_tokens} tokens; the limit is {self.config.max_tokens_per_call} (max_tokens_per_call)")
        return self._enqueue(call).result()

    def _enqueue(self, call: _Call) -> Future:
        """Queue a checked call for the next pass."""
        with self._cond:
            self._queue.append(call)
            self._cond.notify_all()
        return call.future

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    release_workers()  # idle: leave the cores to the process's other compute thread, if any
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                # Calls from several sessions arrive together: collect them for one window.
                deadline = time.monotonic() + self.config.batch_window_s
                while (remaining := deadline - time.monotonic()) > 0 and not self._stop:
                    self._cond.wait(remaining)
                calls, self._queue = self._queue, []
            for backward in (True, False):
                group = [c for c in calls if c.backward is backward]
                for chunk in self._chunks(group):
                    self._run(chunk, backward=backward)

    def _chunks(self, calls: list[_Call]) -> list[list[_Call]]:
        """Split calls into passes under the token budget (a big call is split by datum)."""
        budget = self.config.max_tokens_per_pass
        passes: list[list[_Call]] = []
        current: list[_Call] = []
        used = 0
        for call in calls:
            pieces = [call] if call.num_tokens <= budget else self._split(call, budget)
            for piece in pieces:
                if used + piece.num_tokens > budget and current:
                    passes.append(current)
                    current, used = [], 0
                current.append(piece)
                used += piece.num_tokens
        if current:
            passes.append(current)
        return passes

    def _split(self, call: _Call, budget: int) -> list[_Call]:
        """A call too big for one pass becomes parts whose results are merged back into the call's future."""
        parts: list[_Call] = []
        data: list[LossRow] = []
        start = 0
        for index, datum in enumerate(call.data):
            if data and sum(len(d.tokens) for d in data) + len(datum.tokens) > budget:
                parts.append(_Call(call.session, data, call.loss_fn, call.loss_config, call.backward, start, call))
                data, start = [], index
            data.append(datum)
        parts.append(_Call(call.session, data, call.loss_fn, call.loss_config, call.backward, start, call))
        _merge_into(call, parts)
        return parts

    def _run(self, calls: list[_Call], *, backward: bool) -> None:
        try:
            with compute_threads.working():
                outcomes = self._pass(calls, backward=backward)
        except Exception as err:
            if len(calls) > 1:
                # Something the checks did not foresee failed the pass: run each call on its own, so that
                # only the call that causes it fails (no gradient of the failed pass was applied).
                for call in calls:
                    self._run([call], backward=backward)
                return
            if not isinstance(err, MintError):
                log.error("training pass failed", exc_info=err)
                err = MintError(Code.INTERNAL, f"training pass failed: {err}")
            calls[0].future.set_exception(err)
            return
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, MintError):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)

    def _pass(self, calls: list[_Call], *, backward: bool) -> list[PassResult | MintError]:
        """One base forward (and backward) over every call's data. A call whose loss is not finite gets an
        error instead of a result, and its loss is left out of the backward."""
        sessions: list[Session] = []
        slot_of: dict[str, int] = {}
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        targets: list[int] = []
        lengths: list[int] = []
        for call in calls:
            slot = slot_of.get(call.session.session_id)
            if slot is None:
                sessions.append(call.session)
                slot = slot_of[call.session.session_id] = len(sessions)
            for datum in call.data:
                tokens += datum.tokens
                targets += datum.target_tokens
                positions += range(len(datum.tokens))
                slots += [slot] * len(datum.tokens)
                lengths.append(len(datum.tokens))
        device = self.device
        # A session's optimizer step must not interleave with a pass that writes its gradients.
        locks = [s.lock for s in sorted(sessions, key=lambda s: s.session_id)]
        for lock in locks:
            lock.acquire()
        for call in calls:
            if backward and call.whole is not None and call.first_index == 0:
                call.whole.grads_before = [None if p.grad is None else p.grad.clone() for p in call.session.parameters()]
        self.lora.current = LoRAPass(sessions, torch.tensor(slots, device=device))
        try:
            with torch.set_grad_enabled(backward):
                hidden = self.model(torch.tensor(tokens, device=device), torch.tensor(positions, device=device), VarlenAttention(lengths))
                logp = -F.cross_entropy(self.model.logits(hidden), torch.tensor(targets, device=device), reduction="none")
                datum_losses = []
                offset = 0
                for call in calls:
                    for datum in call.data:
                        datum_losses.append(datum_loss(call.loss_fn, call.loss_config, logp[offset : offset + len(datum.tokens)], datum))
                        offset += len(datum.tokens)
                outcomes, kept = _outcomes(calls, torch.stack(datum_losses), logp)
                if backward and kept:
                    params = {id(p): p for call in kept for p in call.session.parameters()}
                    _accumulate_grads(torch.stack(list(kept.values())).sum(), list(params.values()))
        finally:
            self.lora.current = None
            for lock in locks:
                lock.release()
        self.passes += 1
        return outcomes


def _outcomes(calls: list[_Call], losses: torch.Tensor, logp: torch.Tensor) -> tuple[list[PassResult | MintError], dict[_Call, torch.Tensor]]:
    """Each call's result, or its error when one of its datum losses `losses` [num_data] is not finite; and
    the loss of every call that succeeded, for the backward."""
    loss_values = losses.detach().tolist()  # one transfer for all of the pass's numbers
    all_logprobs = logp.detach().tolist()
    outcomes: list[PassResult | MintError] = []
    kept: dict[_Call, torch.Tensor] = {}
    first_datum = first_token = 0
    for call in calls:
        values = loss_values[first_datum : first_datum + len(call.data)]
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is None:
            kept[call] = losses[first_datum : first_datum + len(call.data)].sum()
            logprobs, token = [], first_token
            for datum in call.data:
                logprobs.append(all_logprobs[token : token + len(datum.tokens)])
                token += len(datum.tokens)
            outcomes.append(PassResult(logprobs, {"loss": math.fsum(values), "tokens": float(call.num_tokens)}))
        else:
            outcomes.append(invalid(
                f"datum {call.first_index + bad}'s {call.loss_fn} loss is {values[bad]}: its loss_fn_inputs are too large for "
                "the model's float precision (or the session's weights are not finite); nothing of this call was applied"
            ))
        first_datum += len(call.data)
        first_token += call.num_tokens
    return outcomes, kept


def _accumulate_grads(loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Add d(loss)/d(param) to each param's .grad once the whole backward has completed (a backward that
    fails part way leaves no partial gradients behind)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for param, grad in zip(params, grads, strict=True):
        if grad is None:
            continue
        if param.grad is None:
            param.grad = grad
        else:
            param.grad.add_(grad)


def _merge_into(call: _Call, parts: list[_Call]) -> None:
    """Complete `call` once all of its parts have run."""

    def done(_future: Future) -> None:
        if not all(p.future.done() for p in parts) or call.future.done():
            return
        errors = [p.future.exception() for p in parts if p.future.exception() is not None]
        if errors:
            if call.grads_before is not None:  # the parts that succeeded added gradients: take them back
                with call.session.lock:
                    for param, grad in zip(call.session.parameters(), call.grads_before, strict=True):
                        param.grad = grad
            call.future.set_exception(errors[0])
            return
        results = [p.future.result() for p in parts]
        call.future.set_result(
            PassResult(
                [lp for r in results for lp in r.logprobs],
                {"loss": sum(r.metrics["loss"] for r in results), "tokens": sum(r.metrics["tokens"] for r in results)},
            )
        )

    for part in parts:
        part.future.add_done_callback(done)


def _rebalance_between_layers(_layer: torch.nn.Module, args: tuple) -> None:
    """A pass takes seconds: between layers, forward and backward, it takes its current share of the cores
    again (the engine in the same process may have started or stopped stepping meanwhile)."""
    compute_threads.rebalance()
    hidden = args[0]
    if hidden.requires_grad:
        hidden.register_hook(_rebalance_in_backward)


def _rebalance_in_backward(grad: torch.Tensor) -> None:
    compute_threads.rebalance()
