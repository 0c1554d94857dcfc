"""Session reaping: a session no call has used for session_idle_s is closed and its memory freed, never
while a call on it is in flight; a tenant at max_sessions_per_tenant is refused until one of its sessions
is closed or reaped, and never on another tenant's account; a reaped session's saved state loads into a new
session, which trains on exactly where the old one left off. Over gRPC, with a fake clock the tests move."""

from __future__ import annotations

import gc
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from mint import auth
from mint.errors import Code, MintError
from mint.params import AdamParams
from mint.sdk import ServiceClient, next_token_datum
from mint.server import build_server
from services.trainer.config import TrainerConfig
from services.trainer.main import trainer_service
from services.trainer.servicer import TrainerServicer
from services.trainer.trainer import Trainer

IDLE_S = 600.0
CAP = 2
KEYS = {  # api key -> the member of a tenant it authenticates as
    "mint_aaaaaaaaaaaa_secret": auth.Principal(tenant="acme", key_id="aaaaaaaaaaaa", role=auth.Role.MEMBER),
    "mint_bbbbbbbbbbbb_secret": auth.Principal(tenant="beta", key_id="bbbbbbbbbbbb", role=auth.Role.MEMBER),
}
ACME, BETA = KEYS
DATA = [next_token_datum([5, 17, 99, 3], [250, 41]), next_token_datum([7, 8], [9, 10, 11])]
PROBE = [next_token_datum([1, 2, 3], [4, 5])]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Keys:
    def authenticate(self, api_key: str) -> auth.Principal:
        if api_key not in KEYS:
            raise MintError(Code.UNAUTHENTICATED, "unknown key")
        return KEYS[api_key]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def served(trainer_base, tmp_path, clock):
    """A trainer on the fake clock behind a real gRPC server; `served.client(key)` talks to it."""
    config = TrainerConfig(model_path=str(trainer_base), state_dir=str(tmp_path / "state"), batch_window_s=0.0,
                           session_idle_s=IDLE_S, max_sessions_per_tenant=CAP)
    trainer = Trainer(config, clock=clock)
    server, port = build_server([trainer_service(TrainerServicer(trainer))], authenticator=Keys())
    server.start()
    clients: list[ServiceClient] = []

    class Served:
        def client(self, key: str = ACME) -> ServiceClient:
            clients.append(ServiceClient(f"127.0.0.1:{port}", key))
            return clients[-1]

    Served.trainer = trainer
    yield Served()
    for client in clients:
        client.close()
    server.stop(None)
    trainer.close()


def session(service: ServiceClient, policy: str, seed: int = 0):
    return service.create_lora_training_client("", policy, rank=4, seed=seed)


def refused(call) -> MintError:
    with pytest.raises(MintError) as err:
        call()
    return err.value


def test_an_idle_session_is_reaped_and_its_memory_freed_while_an_active_one_is_kept(served, clock):
    trainer, service = served.trainer, served.client()
    idle, active = session(service, "idle"), session(service, "active")
    for training in (idle, active):
        training.forward_backward(DATA)
        training.optim_step(AdamParams(learning_rate=1e-2))
    weights = weakref.ref(trainer.sessions[idle.session_id].parameters()[0])
    moments = weakref.ref(next(iter(trainer.sessions[idle.session_id].optimizer.state.values()))["exp_avg"])

    clock.advance(IDLE_S - 100)
    active.forward(PROBE)  # any call is a use
    clock.advance(101)
    trainer.reap_idle()

    assert set(trainer.sessions) == {active.session_id}
    gc.collect()
    assert weights() is None and moments() is None, "the reaped session's weights or optimizer moments are still alive"
    err = refused(idle.info)
    assert err.code is Code.NOT_FOUND
    assert f"{idle.session_id!r} was reaped after {IDLE_S + 1:.0f} s idle" in err.message and "MINT_TRAINER_SESSION_IDLE_S" in err.message
    assert "loaded into a new session with LoadState" in err.message and "it saved none" in err.message, err.message
    assert refused(lambda: idle.forward_backward(DATA)).code is Code.NOT_FOUND
    assert active.forward_backward(DATA).metrics["loss"] > 0


def test_a_session_with_a_call_in_flight_is_not_reaped(served, clock):
    trainer, service = served.trainer, served.client()
    training = session(service, "busy")
    held = trainer.sessions[training.session_id]
    with ThreadPoolExecutor(1) as pool:
        with held.lock:  # the pass that runs the call waits for the session: the call stays in flight
            call = pool.submit(training.forward_backward, DATA)
            deadline = time.monotonic() + 30
            while held.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert held.in_flight == 1
            clock.advance(IDLE_S * 2)
            assert trainer.reap_idle() == []
        assert call.result(timeout=60).metrics["loss"] > 0
    assert training.info().session_id == training.session_id  # the call's end counts as a use: not idle now
    clock.advance(IDLE_S + 1)
    assert trainer.reap_idle() == [training.session_id]


def test_a_tenant_at_its_cap_is_refused_naming_the_limit_until_a_session_is_reaped_or_closed(served, clock):
    trainer, service = served.trainer, served.client()
    first, second = session(service, "one"), session(service, "two")
    err = refused(lambda: session(service, "three"))
    assert err.code is Code.RESOURCE_EXHAUSTED
    for part in ("tenant acme has 2 open training sessions", "max_sessions_per_tenant", "MINT_TRAINER_MAX_SESSIONS_PER_TENANT=2",
                 "CloseSession", f"idle for {IDLE_S:g} s", "MINT_TRAINER_SESSION_IDLE_S"):
        assert part in err.message, (part, err.message)

    clock.advance(IDLE_S / 2)
    second.forward(PROBE)
    clock.advance(IDLE_S / 2 + 1)  # the first is idle past the TTL, the second is not
    third = session(service, "three")  # CreateSession reaps the tenant's idle session to make room
    assert set(trainer.sessions) == {second.session_id, third.session_id}
    assert "was reaped after" in refused(first.info).message

    assert refused(lambda: session(service, "four")).code is Code.RESOURCE_EXHAUSTED
    second.close()
    session(service, "four")


def test_a_reaped_sessions_saved_state_loads_into_a_new_session_that_trains_on_identically(served, clock):
    trainer, service = served.trainer, served.client()
    old = session(service, "resumed", seed=1)
    for _ in range(2):
        old.forward_backward(DATA)
        old.optim_step(AdamParams(learning_rate=1e-2))
    path = old.save_state("ckpt")
    saved_logprobs = old.forward(PROBE).loss_fn_outputs[0]["logprobs"]
    next_loss = old.forward_backward(DATA).metrics["loss"]  # one more step than the state holds, for comparison
    old.optim_step(AdamParams(learning_rate=1e-2))
    stepped_logprobs = old.forward(PROBE).loss_fn_outputs[0]["logprobs"]
    clock.advance(IDLE_S + 1)
    trainer.reap_idle()
    assert f"the last one it saved is {path}" in refused(old.info).message

    new = session(service, "resumed", seed=2)
    assert new.load_state(path).step == 2
    assert new.forward(PROBE).loss_fn_outputs[0]["logprobs"] == pytest.approx(saved_logprobs, abs=1e-6)
    assert new.forward_backward(DATA).metrics["loss"] == pytest.approx(next_loss, abs=1e-6)
    new.optim_step(AdamParams(learning_rate=1e-2))  # the optimizer's moments came back too
    assert new.forward(PROBE).loss_fn_outputs[0]["logprobs"] == pytest.approx(stepped_logprobs, abs=1e-6)


def test_tenants_never_count_against_or_get_reaped_for_each_other(served, clock):
    trainer, acme, beta = served.trainer, served.client(ACME), served.client(BETA)
    betas = [session(beta, f"b{i}") for i in range(CAP)]
    clock.advance(IDLE_S + 1)  # beta's sessions are idle past the TTL, and no sweep has run
    acmes = [session(acme, f"a{i}") for i in range(CAP)]  # beta's full cap does not count against acme
    assert refused(lambda: session(acme, "more")).code is Code.RESOURCE_EXHAUSTED  # nor are beta's reaped to make room
    assert set(trainer.sessions) == {s.session_id for s in betas + acmes}

    trainer.reap_idle("acme")
    assert set(trainer.sessions) == {s.session_id for s in betas + acmes}
    trainer.reap_idle()
    assert set(trainer.sessions) == {s.session_id for s in acmes}
    assert "was reaped after" in refused(betas[0].info).message
    # Another tenant's key learns nothing of a reaped session, not even that it was reaped.
    acmes[0].session_id = betas[0].session_id
    err = refused(acmes[0].info)
    assert err.code is Code.NOT_FOUND and "reaped" not in err.message, err.message


def test_the_trainers_own_sweep_reaps_idle_sessions(make_trainer):
    trainer = make_trainer(session_idle_s=0.01)  # the real clock: a thread sweeps, every second at the least
    created = trainer.create_session(tenant="acme", policy="swept", rank=4)
    deadline = time.monotonic() + 30
    while trainer.sessions and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not trainer.sessions and created.closed and created.params == []


def test_no_idle_ttl_never_reaps(make_trainer, clock):
    trainer = Trainer(TrainerConfig(model_path=make_trainer().config.model_path, session_idle_s=0, max_sessions_per_tenant=1), clock=clock)
    try:
        trainer.create_session(tenant="acme", policy="kept", rank=4)
        clock.advance(10**9)
        assert trainer.reap_idle() == []
        with pytest.raises(MintError, match="never reaped for being idle here: MINT_TRAINER_SESSION_IDLE_S=0"):
            trainer.create_session(tenant="acme", policy="more", rank=4)
    finally:
        trainer.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MINT_TRAINER_SESSION_IDLE_S": "-5"}, "session_idle_s \\(MINT_TRAINER_SESSION_IDLE_S\\) is -5.0; it must be a number of seconds >= 0"),
        ({"MINT_TRAINER_SESSION_IDLE_S": "an hour"}, "MINT_TRAINER_SESSION_IDLE_S='an hour' is not a number"),
        ({"MINT_TRAINER_MAX_SESSIONS_PER_TENANT": "0"}, "max_sessions_per_tenant \\(MINT_TRAINER_MAX_SESSIONS_PER_TENANT\\) is 0; it must be at least 1"),
        ({"MINT_TRAINER_MAX_SESSIONS_PER_TENANT": "2.5"}, "MINT_TRAINER_MAX_SESSIONS_PER_TENANT='2.5' is not an integer"),
    ],
)
def test_bad_reaping_settings_name_the_variable(env, message):
    with pytest.raises(MintError, match=message):
        TrainerConfig.from_env({"MINT_MODEL_PATH": "/m", **env})


def test_the_defaults_reap_after_an_hour_and_cap_at_64():
    config = TrainerConfig.from_env({"MINT_MODEL_PATH": "/m"})
    assert (config.session_idle_s, config.max_sessions_per_tenant) == (3600.0, 64)
