"""OptimStep's Adam parameters over real gRPC: unset fields (as proto3 JSON clients send them) take the
documented defaults, and a set field outside its range is refused naming the field, the value and the range,
before it can turn the session's weights into NaN."""

from __future__ import annotations

import math

import pytest
from google.protobuf import json_format

from mint.errors import Code, MintError
from mint.params import AdamParams
from mint.proto import common_pb2, trainer_pb2, trainer_pb2_grpc
from mint.sdk import ServiceClient
from mint.sdk.catalog import rpc
from services.embedded import EmbeddedConfig, EmbeddedStack

NAN, INF = float("nan"), float("inf")
DATA = [trainer_pb2.Datum(tokens=[5, 17, 99, 3], loss_fn_inputs={"target_tokens": common_pb2.TensorData(int_data=[17, 99, 3, 8])})]


@pytest.fixture(scope="module")
def service(trainer_base, tmp_path_factory):
    config = EmbeddedConfig(model_path=str(trainer_base), data_dir=str(tmp_path_factory.mktemp("stack")), address="127.0.0.1:0")
    stack = EmbeddedStack(config).start()
    service = ServiceClient(stack.address, stack.admin_key)
    yield service
    service.close()
    stack.stop()


def call(service: ServiceClient, method: str, request):
    return rpc(getattr(trainer_pb2_grpc.TrainerServiceStub(service.channel), method), request, metadata=service.metadata)


def trained(service: ServiceClient, adam_params: trainer_pb2.AdamParams | None, steps: int = 3) -> list[float]:
    """A fresh session (the same seed every time) after `steps` steps with `adam_params`: its logprobs of DATA."""
    session_id = call(service, "CreateSession", trainer_pb2.CreateSessionRequest(policy="adam", rank=4, seed=5, train_attn=True)).session_id
    for _ in range(steps):
        call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=DATA))
        request = trainer_pb2.OptimStepRequest(session_id=session_id)
        if adam_params is not None:
            request.adam_params.CopyFrom(adam_params)
        call(service, "OptimStep", request)
    return list(call(service, "Forward", trainer_pb2.ForwardRequest(session_id=session_id, data=DATA)).loss_fn_outputs[0].outputs["logprobs"].float_data)


RANGES = {
    "learning_rate": "(0, 1]", "beta1": "[0, 1)", "beta2": "[0, 1)", "eps": "(0, 1]", "weight_decay": "[0, 1]", "grad_clip_norm": "[0, inf)",
}
OUT_OF_RANGE = {
    "learning_rate": [0.0, -1e-3, 2.0], "beta1": [-0.1, 1.0, 1.5], "beta2": [-0.1, 1.0, 1.5], "eps": [0.0, -1e-8, 2.0],
    "weight_decay": [-0.01, 1.5], "grad_clip_norm": [-1.0],
}
REFUSED = [(field, value) for field in RANGES for value in (NAN, INF, -INF, *OUT_OF_RANGE[field])]


@pytest.mark.parametrize("field, value", REFUSED, ids=[f"{f}={v}" for f, v in REFUSED])
def test_a_field_outside_its_range_is_refused_naming_it(service, field, value):
    session_id = call(service, "CreateSession", trainer_pb2.CreateSessionRequest(policy="adam", rank=4, train_attn=True)).session_id
    call(service, "ForwardBackward", trainer_pb2.ForwardBackwardRequest(session_id=session_id, data=DATA))
    request = trainer_pb2.OptimStepRequest(session_id=session_id, adam_params=trainer_pb2.AdamParams(**{field: value}))
    with pytest.raises(MintError) as err:
        call(service, "OptimStep", request)
    assert err.value.code is Code.INVALID_ARGUMENT
    assert f"adam_params.{field} is {value}; it must be a finite number in {RANGES[field]}" in err.value.message
    # Nothing moved: the session still steps, and its step count did not advance.
    assert call(service, "OptimStep", trainer_pb2.OptimStepRequest(session_id=session_id)).step == 1


def test_unset_fields_take_the_documented_defaults(service):
    explicit = trained(service, AdamParams().to_proto())
    assert explicit != trained(service, None, steps=0), "the steps moved the weights"
    assert all(math.isfinite(v) for v in explicit)
    assert trained(service, trainer_pb2.AdamParams()) == explicit
    assert trained(service, None) == explicit  # no adam_params at all


def test_a_json_client_that_leaves_out_defaults_gets_them(service):
    # A proto3 JSON client writes only what differs from the zero value: here the learning rate and a zero beta1.
    sent = json_format.Parse('{"learningRate": 0.01, "beta1": 0}', trainer_pb2.AdamParams())
    assert trained(service, sent) == trained(service, AdamParams(learning_rate=0.01, beta1=0.0).to_proto())
    assert trained(service, sent) != trained(service, AdamParams(learning_rate=0.01).to_proto()), "a zero beta1 is not the default"
