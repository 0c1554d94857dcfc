"""The gateway's SamplingService on the embedded stack, with two tenants that published the same bytes:
neither sees the other's waves, addresses or revision names; and the base's tokenizer, from the in-process
engine."""

from __future__ import annotations

import time

import pytest

from mint.errors import Code, MintError
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from mint.models.tokenizer import Tokenizer
from mint.sdk import SamplingParams, ServiceClient
from services.embedded import EmbeddedConfig, EmbeddedStack
from tests.engine.conftest import random_adapter

ADAPTER = random_adapter(ModelConfig.from_name("tiny"), rank=2, seed=31, modules=("q_proj", "v_proj"))
PARAMS = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    init_base(root / "tiny", arch="llama", preset="tiny", seed=12)
    stack = EmbeddedStack(EmbeddedConfig(model_path=str(root / "tiny"), data_dir=str(root / "data"), address="127.0.0.1:0")).start()
    admin = ServiceClient(stack.address, stack.admin_key)
    clients = {"admin": admin}
    for tenant in ("acme", "rival"):
        admin.catalog.create_tenant(tenant)
        clients[tenant] = ServiceClient(stack.address, admin.catalog.create_api_key(tenant, "k"))
    yield stack, clients
    for client in clients.values():
        client.close()
    stack.stop()


def publish(client: ServiceClient, policy: str, weights, base: str) -> str:
    client.catalog.create_policy(policy, base)
    revision = client.catalog.publish(policy, weights)
    return revision.address


def error_of(fn, *args) -> MintError:
    with pytest.raises(MintError) as info:
        fn(*args)
    return info.value


def test_a_wave_is_read_only_by_its_tenant_and_privileged_keys(stack):
    stack, clients = stack
    ref = publish(clients["acme"], "secret-plan", ADAPTER, stack.base_model)
    wave = clients["acme"].activate_wave([ref], "eval")
    assert clients["acme"].get_wave(wave.wave_id).total == 1
    assert clients["admin"].get_wave(wave.wave_id).total == 1
    other = error_of(clients["rival"].get_wave, wave.wave_id)
    unknown = error_of(clients["rival"].get_wave, "0" * 32)
    assert other.code is Code.NOT_FOUND
    assert other.message == unknown.message.replace("0" * 32, wave.wave_id)  # exactly as if it did not exist
    assert "secret-plan" not in other.message and "acme" not in other.message


@pytest.mark.parametrize("case", ["lost blob", "rank past the engine's"])
def test_a_load_failure_of_shared_bytes_names_only_the_callers_address(stack, case):
    """Both tenants publish the same bytes; the first's wave fails to load them. What the scheduler keeps is
    about the adapter, and the second tenant's error is worded with its own address."""
    stack, clients = stack
    rank = 48 if case == "rank past the engine's" else 2  # the embedded engine serves ranks up to 32
    weights = random_adapter(ModelConfig.from_name("tiny"), rank=rank, seed=32 + rank, modules=("q_proj",))
    policy = f"first-loader-{rank}"
    acme_ref = publish(clients["acme"], policy, weights, stack.base_model)
    rival_ref = publish(clients["rival"], f"second-{rank}", weights, stack.base_model)
    sha = clients["rival"].catalog.resolve(rival_ref).adapter.sha256
    assert clients["acme"].catalog.resolve(acme_ref).adapter.sha256 == sha
    if case == "lost blob":
        stack.catalog.blobs.path(sha).unlink()  # lost before any engine loaded it

    wave = clients["acme"].activate_wave([acme_ref], f"doomed-{rank}")
    deadline = time.monotonic() + 60
    while not (status := clients["acme"].get_wave(wave.wave_id)).ready:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status.failed == 1 and policy not in status.failures[0] and "acme" not in status.failures[0]

    error = error_of(clients["rival"].create_sampling_client(rival_ref).sample, [1, 2, 3], 1, PARAMS)
    assert error.code is Code.FAILED_PRECONDITION
    assert error.message.startswith(f"{rival_ref} could not be loaded on any engine: ")
    assert "acme" not in error.message and policy not in error.message


def test_the_embedded_stack_gives_its_bases_tokenizer(stack):
    stack, clients = stack
    own = Tokenizer.from_dir(stack.config.model_path)
    for served in (clients["acme"].get_tokenizer(), clients["rival"].get_tokenizer(stack.base_model)):
        assert served.backend.to_str() == own.backend.to_str() and served.chat_template == own.chat_template
        assert served.eos_token_ids == own.eos_token_ids
    unknown = error_of(clients["acme"].get_tokenizer, "nope")
    assert unknown.code is Code.NOT_FOUND and unknown.message == f"no engine serves base model 'nope'; the engines serve [{stack.base_model!r}]"
