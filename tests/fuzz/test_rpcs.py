"""Every public RPC against a live embedded server, with requests generated from its descriptor, mutated
from valid ones, or not messages at all (tests/fuzz/live.py says what is judged): never a fault status or
a hang, nothing stored by a refused call, and the server healthy after each method's run."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mint.proto import trainer_pb2
from tests.fuzz.live import METHODS, Case, World, cases

EXAMPLES_PER_METHOD = 50


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("fuzz-rpc"))
    yield world
    world.close()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_rpc_answers_fuzzed_requests_with_client_statuses(world, service, method):
    @settings(max_examples=EXAMPLES_PER_METHOD)
    @given(data=st.data())
    def check(data):
        case = data.draw(cases(world, methods=[(service, method)]))
        verdict = world.judge(case)
        assert not verdict.fault, (verdict.status, verdict.details)
        assert not verdict.hang, f"no answer within the deadline ({verdict.elapsed_s:.1f}s)"
        assert not verdict.stored, f"refused with {verdict.status.name} ({verdict.details}) but stored: {verdict.stored}"

    check()
    assert world.healthy()
    assert world.settle() == []
    world.refresh()


def test_fuzzed_calls_leave_the_world_answering(world):
    """After every method's run: a valid call of each kind still succeeds (nothing a fuzzed call did broke
    the server for well-behaved clients)."""
    assert world.healthy()
    for name in ("Resolve", "Sample", "ForwardBackward"):
        service, method = next((s, m) for s, m in METHODS if m.name == name)
        seed = world.seeds[name][0]
        verdict = world.judge(Case(service, method, tuple(m.SerializeToString() for m in seed), "acme", "seed"))
        assert verdict.status in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (name, verdict)


def test_a_refused_create_session_stores_no_policy(world):
    """Found by this fuzzing: the trainer created a new policy (and its audit event) before checking the
    session's settings, so a CreateSession refused for its base model or rank left the policy behind."""
    service, method = next((s, m) for s, m in METHODS if m.name == "CreateSession")
    for request in (
        trainer_pb2.CreateSessionRequest(policy="fresh-a", base_model="not-this-base", rank=2, train_attn=True),
        trainer_pb2.CreateSessionRequest(policy="fresh-b", rank=100_000, train_attn=True),
    ):
        verdict = world.judge(Case(service, method, (request.SerializeToString(),), "acme", "reproducer"))
        assert verdict.status is grpc.StatusCode.INVALID_ARGUMENT, verdict
        assert not verdict.stored, verdict.stored
