"""One bad call never fails the calls batched with it. Over the real embedded stack, a session sends a
malformed or overflowing datum while another sends a good call in the same batch window: the bad one is
refused (INVALID_ARGUMENT naming the datum, the input and what was expected), the good one succeeds with
exactly what it gets alone, and training it afterwards matches too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from mint.errors import Code, MintError
from mint.proto import common_pb2, trainer_pb2, trainer_pb2_grpc
from mint.sdk import ServiceClient
from mint.sdk.catalog import rpc
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.trainer.losses import LossRow
from services.trainer.trainer import _Call

WINDOW_S = 0.5  # long enough that calls sent together share a pass
MAX_TOKENS_PER_PASS = 64
MAX_TOKENS_PER_CALL = 128
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def stack(trainer_base, tmp_path_factory):
    trainer = {"batch_window_s": WINDOW_S, "max_tokens_per_pass": MAX_TOKENS_PER_PASS, "max_tokens_per_call": MAX_TOKENS_PER_CALL}
    config = EmbeddedConfig(model_path=str(trainer_base), data_dir=str(tmp_path_factory.mktemp("stack")), address="127.0.0.1:0", trainer=trainer)
    stack = EmbeddedStack(config).start()
    service = ServiceClient(stack.address, stack.admin_key)
    yield stack, service
    service.close()
    stack.stop()


def ints(values, shape=None) -> common_pb2.TensorData:
    return common_pb2.TensorData(int_data=values, shape=[len(values)] if shape is None else shape)


def floats(values, shape=None) -> common_pb2.TensorData:
    return common_pb2.TensorData(float_data=values, shape=[len(values)] if shape is None else shape)


def datum(tokens, **inputs) -> trainer_pb2.Datum:
    return trainer_pb2.Datum(tokens=tokens, loss_fn_inputs=inputs)


TOKENS = [5, 17, 99, 3, 250, 41]
TARGETS = [17, 99, 3, 250, 41, 8]
GOOD = [datum(TOKENS, target_tokens=ints(TARGETS), weights=floats([0, 0, 1, 1, 1, 1])), datum([7, 8, 9], target_tokens=ints([8, 9, 10]))]
PROBE = [datum([1, 2, 3, 4], target_tokens=ints([2, 3, 4, 5]))]


def call(service: ServiceClient, method: str, request):
    return rpc(getattr(trainer_pb2_grpc.TrainerServiceStub(service.channel), method), request, metadata=service.metadata)


def session(service: ServiceClient, policy: str, seed: int) -> str:
    request = trainer_pb2.CreateSessionRequest(policy=policy, rank=4, seed=seed, train_attn=True, train_mlp=True)
    return call(service, "CreateSession", request).session_id


def train_good(service: ServiceClient, session_id: str, fb=None) -> tuple:
    """The good call's answer, then what the session scores after one step on it."""
    if fb is None:
        fb = call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=GOOD, loss_fn="cross_entropy"))
    call(service, "OptimStep", trainer_pb2.OptimStepRequest(session_id=session_id, adam_params=trainer_pb2.AdamParams(learning_rate=1e-2)))
    after = call(service, "Forward", trainer_pb2.ForwardRequest(session_id=session_id, data=PROBE))
    return fb, after


def logprobs(response) -> list[list[float]]:
    return [list(out.outputs["logprobs"].float_data) for out in response.loss_fn_outputs]


def assert_same(got, alone) -> None:
    (fb, after), (fb_alone, after_alone) = got, alone
    assert fb.metrics["loss"] == pytest.approx(fb_alone.metrics["loss"], abs=1e-4)
    for a, b in zip(logprobs(fb) + logprobs(after), logprobs(fb_alone) + logprobs(after_alone), strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.fixture(scope="module")
def alone(stack):
    _, service = stack
    return train_good(service, session(service, "alone", seed=11))


def bad(data, loss_fn="cross_entropy", **config) -> trainer_pb2.ForwardBackwardRequest:
    return trainer_pb2.ForwardBackwardRequest(data=data, loss_fn=loss_fn, loss_fn_config=config)


def long_datum(n: int) -> trainer_pb2.Datum:
    return datum([1] * n, target_tokens=ints([1] * n))


OK = datum([1, 2], target_tokens=ints([2, 3]))
MALFORMED = {
    "weights longer than tokens": (bad([OK, datum([1, 2], target_tokens=ints([2, 3]), weights=floats([1, 1, 1]))]),
                                   r"datum 1: loss_fn_inputs\['weights'\] has 3 values; expected 2"),
    "weights shorter than tokens": (bad([datum([1, 2, 3], target_tokens=ints([2, 3, 4]), weights=floats([1]))]),
                                    r"datum 0: loss_fn_inputs\['weights'\] has 1 values; expected 3"),
    "targets shorter than tokens": (bad([OK, datum([1, 2], target_tokens=ints([2]))]), r"datum 1: loss_fn_inputs\['target_tokens'\] has 1 values; expected 2"),
    "targets as floats": (bad([datum([1, 2], target_tokens=floats([2, 3]))]), r"datum 0: loss_fn_inputs\['target_tokens'\] holds token ids in int_data"),
    "weights as ints": (bad([datum([1, 2], target_tokens=ints([2, 3]), weights=ints([1, 1]))]), r"datum 0: loss_fn_inputs\['weights'\] holds floats in float_data"),
    "shape not the values'": (bad([datum([1, 2], target_tokens=ints([2, 3], shape=[2, 1]))]), r"has shape \[2, 1\] for 2 values; expected \[2\]"),
    "unknown input": (bad([datum([1, 2], target_tokens=ints([2, 3]), mask=floats([1, 1]))]), r"datum 0: unknown loss_fn_inputs key 'mask'"),
    "input the loss does not take": (bad([datum([1, 2], target_tokens=ints([2, 3]), advantages=floats([1, 1]))]),
                                     r"datum 0: loss cross_entropy takes no loss_fn_inputs\['advantages'\]"),
    "no targets": (bad([datum([1, 2], weights=floats([1, 1]))]), r"datum 0: loss cross_entropy needs loss_fn_inputs\['target_tokens'\]"),
    "ppo without logprobs": (bad([datum([1, 2], target_tokens=ints([2, 3]), advantages=floats([1, 1]))], "ppo"),
                             r"datum 0: loss ppo needs loss_fn_inputs\['logprobs'\]"),
    "nan weight": (bad([datum([1, 2], target_tokens=ints([2, 3]), weights=floats([1, NAN]))]), r"datum 0: loss_fn_inputs\['weights'\]\[1\] is nan"),
    "inf advantage": (bad([datum([1, 2], target_tokens=ints([2, 3]), logprobs=floats([-1, -1]), advantages=floats([INF, 1]))], "ppo"),
                      r"datum 0: loss_fn_inputs\['advantages'\]\[0\] is inf"),
    "target outside the vocabulary": (bad([datum([1, 2], target_tokens=ints([2, 512]))]), r"'target_tokens'\]\[1\] is 512; token ids must be in 0\.\.511"),
    "target beyond int32": (bad([datum([1, 2], target_tokens=ints([2, 2**40]))]), r"'target_tokens'\]\[1\] is 1099511627776"),
    "negative token": (bad([datum([1, -3], target_tokens=ints([2, 3]))]), r"datum 0: tokens\[1\] is -3"),
    "no tokens": (bad([OK, datum([], target_tokens=ints([]))]), r"datum 1: tokens is empty"),
    "no data": (bad([]), r"at least one datum"),
    "datum over the pass budget": (bad([long_datum(MAX_TOKENS_PER_PASS + 1)]), r"datum 0 has 65 tokens; the limit is 64 \(max_tokens_per_pass\)"),
    "call over its budget": (bad([long_datum(MAX_TOKENS_PER_PASS)] * 3), r"hold 192 tokens; the limit is 128 \(max_tokens_per_call\)"),
    "unknown loss": (bad([OK], "mystery"), r"unknown loss_fn 'mystery'"),
    "config the loss does not take": (bad([OK], "cross_entropy", clip_low=0.1), r"unknown loss_fn_config keys \['clip_low'\] for loss cross_entropy"),
    "clip out of range": (bad([datum([1, 2], target_tokens=ints([2, 3]), logprobs=floats([-1, -1]), advantages=floats([1, 1]))], "ppo", clip_low=1.5),
                          r"loss_fn_config\['clip_low'\] is 1.5; it must be a finite number in \[0, 1\)"),
    # Passes every check, but its loss overflows float32 in the pass: it fails there, alone.
    "loss overflows": (bad([OK, datum([1, 2], target_tokens=ints([2, 3]), weights=floats([3e38, 3e38]))]), r"datum 1's cross_entropy loss is -?inf"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_bad_call_fails_alone_and_its_batch_mate_gets_what_it_gets_alone(stack, alone, case):
    server, service = stack
    request, message = MALFORMED[case]
    good_id, bad_id = session(service, "good", seed=11), session(service, "bad", seed=12)
    request.session_id = bad_id
    good_request = trainer_pb2.ForwardBackwardRequest(session_id=good_id, data=GOOD, loss_fn="cross_entropy")
    passes = server.trainer.passes
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(call, service, "ForwardBackward", good_request)
        refused = pool.submit(call, service, "ForwardBackward", request)
        with pytest.raises(MintError, match=message) as err:
            refused.result()
        fb = good.result()
    assert err.value.code is Code.INVALID_ARGUMENT
    if case == "loss overflows":  # it did reach the pass, and shared it with the good call
        assert server.trainer.passes == passes + 1
    assert_same(train_good(service, good_id, fb), alone)
    # The refused session is still usable.
    call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=bad_id, data=[OK]))


@pytest.mark.server_errors  # the unchecked call fails the pass with a real error, and the trainer logs it
def test_a_pass_that_raises_is_run_again_call_by_call(stack, alone):
    """A failure no check foresaw (here: a call that skipped the checks) fails only the call that causes it."""
    server, service = stack
    good_id = session(service, "good", seed=11)
    victim = server.trainer.session(session(service, "bad", seed=12))
    unchecked = _Call(victim, [LossRow(tokens=[1, 2], target_tokens=[2, 3], weights=[1.0, 1.0, 1.0])], "cross_entropy", {}, True)
    good_request = trainer_pb2.ForwardBackwardRequest(session_id=good_id, data=GOOD, loss_fn="cross_entropy")
    with ThreadPoolExecutor(1) as pool:
        failing = server.trainer._enqueue(unchecked)
        fb = pool.submit(call, service, "ForwardBackward", good_request).result()
    with pytest.raises(MintError) as err:
        failing.result()
    assert err.value.code is Code.INTERNAL
    assert_same(train_good(service, good_id, fb), alone)
    assert all(p.grad is None for p in victim.parameters()), "the failed call added no gradient"


def test_a_failing_part_of_a_split_call_takes_back_its_other_parts_gradients(stack):
    """A call over the pass budget runs as parts; when one part fails, the call fails and none of it applies."""
    _, service = stack
    session_id = session(service, "split", seed=3)
    half = MAX_TOKENS_PER_PASS // 2
    first = [long_datum(half), long_datum(half)]
    overflow = datum([1, 2], target_tokens=ints([2, 3]), weights=floats([3e38, 3e38]))
    request = trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=[*first, overflow])
    with pytest.raises(MintError, match=r"datum 2's cross_entropy loss") as err:
        call(service, "ForwardBackward", request)
    assert err.value.code is Code.INVALID_ARGUMENT
    step = call(service, "OptimStep", trainer_pb2.OptimStepRequest(session_id=session_id, adam_params=trainer_pb2.AdamParams(learning_rate=1e-2)))
    assert step.metrics["grad_norm"] == 0.0


def test_gradients_too_large_to_step_on_are_dropped_and_the_session_carries_on(stack):
    _, service = stack
    session_id = session(service, "huge", seed=4)
    huge = datum([1, 2, 3], target_tokens=ints([2, 3, 4]), weights=floats([1e36] * 3))  # a finite loss, overflowing gradients
    call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=[huge]))
    step = trainer_pb2.OptimStepRequest(session_id=session_id)
    with pytest.raises(MintError, match=r"the gradients since the last step overflow .* no step was taken") as err:
        call(service, "OptimStep", step)
    assert err.value.code is Code.INVALID_ARGUMENT
    call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=[OK]))
    after = call(service, "OptimStep", step)
    assert after.step == 1 and 0 < after.metrics["grad_norm"] < 1e6
