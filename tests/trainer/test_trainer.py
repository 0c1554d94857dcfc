"""Training primitives: batched sessions equal sequential ones, exports match peft, state resumes exactly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from mint.errors import Code, MintError
from mint.params import AdamParams
from services.trainer.losses import LossRow


def sft_data(seed: int, n: int = 3, length: int = 12) -> list[LossRow]:
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        seq = torch.randint(0, 512, (length + 1,), generator=gen).tolist()
        data.append(LossRow(tokens=seq[:-1], target_tokens=seq[1:], weights=[0.0] * 3 + [1.0] * (length - 3)))
    return data


def grads(session) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in session.named_parameters().items()}


def together(trainer, sessions, data, loss_fn, config) -> list:
    """forward_backward for every session from its own thread, all at once (as concurrent clients do)."""
    with ThreadPoolExecutor(len(sessions)) as pool:
        futures = [pool.submit(trainer.forward_backward, s, d, loss_fn, config) for s, d in zip(sessions, data, strict=True)]
        return [f.result() for f in futures]


def test_batched_sessions_equal_sequential_calls(make_trainer):
    trainer = make_trainer()
    sessions = [
        trainer.create_session(tenant="acme", policy=f"p{i}", rank=rank, seed=i, train_mlp=i != 1)
        for i, rank in enumerate((4, 8, 16))
    ]
    for session in sessions:  # a step first, so B is non-zero and every grad is non-trivial
        trainer.forward_backward(session, sft_data(100), "cross_entropy")
        trainer.optim_step(session, AdamParams(learning_rate=1e-2))
    losses = {"cross_entropy": {}, "ppo": {"clip_low": 0.1, "clip_high": 0.3}}
    for loss_fn, config in losses.items():
        data = [sft_data(i) for i in range(3)]
        if loss_fn == "ppo":
            for d in data:
                for datum in d:
                    datum.logprobs = [-6.0] * len(datum.tokens)
                    datum.advantages = [0.5 - (t % 2) for t in range(len(datum.tokens))]
        sequential = []
        for session, d in zip(sessions, data, strict=True):
            result = trainer.forward_backward(session, d, loss_fn, config)
            sequential.append((result, grads(session)))
            session.optimizer.zero_grad(set_to_none=True)
        passes = trainer.passes
        results = together(trainer, sessions, data, loss_fn, config)
        assert trainer.passes == passes + 1, "the three calls should have run as one pass"
        for session, result, (alone, alone_grads) in zip(sessions, results, sequential, strict=True):
            assert result.metrics["loss"] == pytest.approx(alone.metrics["loss"], abs=1e-4)
            for name, grad in grads(session).items():
                assert torch.allclose(grad, alone_grads[name], atol=1e-5, rtol=0), name
            session.optimizer.zero_grad(set_to_none=True)


def test_a_budget_splits_passes_without_changing_results(make_trainer):
    big = make_trainer()
    small = make_trainer(max_tokens_per_pass=24)
    a = big.create_session(tenant="acme", policy="p", rank=4, seed=7)
    b = small.create_session(tenant="acme", policy="p", rank=4, seed=7)
    data = sft_data(5, n=4)
    ra = big.forward_backward(a, data, "cross_entropy")
    rb = small.forward_backward(b, data, "cross_entropy")
    assert small.passes >= 2
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], abs=1e-4)
    for name, grad in grads(a).items():
        assert torch.allclose(grad, grads(b)[name], atol=1e-5)


def test_exported_adapter_matches_transformers_peft(make_trainer, trainer_base, tmp_path):
    trainer = make_trainer()
    session = trainer.create_session(tenant="acme", policy="p", rank=8, alpha=16, seed=1)
    for _ in range(3):
        trainer.forward_backward(session, sft_data(2), "cross_entropy")
        trainer.optim_step(session, AdamParams(learning_rate=5e-3))
    probe = sft_data(9, n=2)
    ours = trainer.forward(session, probe).logprobs
    directory = session.adapter_weights().save(tmp_path / "export")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trainer_base, dtype=torch.float32), directory).eval()
    for datum, got in zip(probe, ours, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([datum.tokens])).logits[0]
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(datum.target_tokens).unsqueeze(1)).squeeze(1)
        assert torch.allclose(torch.tensor(got), expected, atol=1e-4, rtol=0)


def test_save_and_load_state_resume_exactly(make_trainer):
    trainer = make_trainer()
    params = AdamParams(learning_rate=1e-2, weight_decay=0.01)
    straight = trainer.create_session(tenant="acme", policy="p", rank=4, seed=3)
    resumed = trainer.create_session(tenant="acme", policy="p", rank=4, seed=99)
    for step in range(4):
        trainer.forward_backward(straight, sft_data(step), "cross_entropy")
        trainer.optim_step(straight, params)
        if step == 1:
            path = trainer.save_state(straight, "halfway")
    trainer.load_state(resumed, path, with_optimizer=True)
    assert resumed.step == 2
    for step in range(2, 4):
        trainer.forward_backward(resumed, sft_data(step), "cross_entropy")
        trainer.optim_step(resumed, params)
    for name, param in straight.named_parameters().items():
        assert torch.allclose(param, resumed.named_parameters()[name], atol=1e-6), name
    other_tenant = trainer.create_session(tenant="globex", policy="p", rank=4)
    with pytest.raises(MintError, match="not one of tenant globex"):
        trainer.load_state(other_tenant, path, with_optimizer=True)
    cut_short = Path(path).with_suffix(".tmp")  # what a save that a crash interrupted leaves behind
    cut_short.write_bytes(b"\x08\x00\x00")
    with pytest.raises(MintError, match="is not a state file that SaveState wrote") as err:
        trainer.load_state(resumed, str(cut_short), with_optimizer=True)
    assert err.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "datum, loss_fn, message",
    [
        (LossRow(tokens=[], target_tokens=[]), "cross_entropy", "datum 0: tokens is empty"),
        (LossRow(tokens=[1, 2], target_tokens=[2]), "cross_entropy", "'target_tokens'\\] has 1 values; expected 2"),
        (LossRow(tokens=[1, 2], target_tokens=[2, 3], weights=[1.0, 1.0, 1.0]), "cross_entropy", "'weights'\\] has 3 values; expected 2"),
        (LossRow(tokens=[1, 2], target_tokens=[2, 99999]), "cross_entropy", "'target_tokens'\\]\\[1\\] is 99999; token ids must be in 0..511"),
        (LossRow(tokens=[1, 2], target_tokens=[2, 3]), "ppo", "needs loss_fn_inputs\\['logprobs'\\]"),
        (LossRow(tokens=[1, 2], target_tokens=[2, 3]), "mystery", "unknown loss_fn"),
        (LossRow(tokens=[1, 2], target_tokens=[2, 3], weights=[1.0, float("nan")]), "cross_entropy", "\\[1\\] is nan; values must be finite"),
    ],
)
def test_bad_data_is_refused(make_trainer, datum, loss_fn, message):
    trainer = make_trainer()
    session = trainer.create_session(tenant="acme", policy="p", rank=4)
    with pytest.raises(MintError, match=message):
        trainer.forward_backward(session, [datum], loss_fn)
