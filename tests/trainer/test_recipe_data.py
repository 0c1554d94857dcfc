"""SFT training data is the client's: a recipe runs as an SDK client and sends its examples as training data,
and `mint train sft --data FILE` reads FILE where the command runs. No trainer RPC takes a path or a file
(RunRecipe, which once read sft.data_path as the server's user, is gone: an old client's call is
UNIMPLEMENTED). Malformed, empty or unreadable data, and out-of-range settings, are refused with a message
naming them before anything trains."""

from __future__ import annotations

import json

import pytest

from mint.errors import Code, MintError
from mint.procs import embedded
from mint.recipes.grpo import GRPOConfig
from mint.recipes.sft import SFTConfig, run_sft
from mint.recipes.tasks import parse_examples
from mint.sdk import ServiceClient
from mint.sdk.catalog import rpc_stream

EXAMPLES = [{"prompt": "abc", "completion": " abc abc"}, {"messages": [{"role": "user", "content": "xyz"}, {"role": "assistant", "content": " xyz xyz"}]}]


@pytest.fixture(scope="module")
def stack(trainer_base, tmp_path_factory):
    stack = embedded(model_path=str(trainer_base), data_dir=str(tmp_path_factory.mktemp("stack")), address="127.0.0.1:0")
    service = ServiceClient(stack.address, stack.admin_key)
    yield stack, service
    service.close()
    stack.stop()


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_the_clients_examples_train_and_publish(stack):
    _, service = stack
    client = service.create_lora_training_client(stack[0].base_model, "uploaded", rank=4)
    reports = run_sft(client, service.get_tokenizer(), parse_examples(jsonl(EXAMPLES), "mine.jsonl"), SFTConfig(steps=3, batch_size=2))
    assert [r.step for r in reports] == [1, 2, 3]
    assert [r.published for r in reports] == ["", "", "mint://local/uploaded@1"]
    assert all(r.metrics["loss"] > 0 for r in reports)


def _old_run_recipe_naming(path: str) -> bytes:
    """RunRecipeRequest{session: {policy: "probe"}, sft: {data_path: path}} in the old contract's bytes."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload  # every payload here is under 128 bytes

    return field(1, field(2, b"probe")) + field(2, field(1, path.encode()))


def test_an_old_clients_recipe_job_naming_a_server_path_is_unimplemented(stack, tmp_path):
    _, service = stack
    readable = tmp_path / "server-side.jsonl"
    readable.write_bytes(jsonl(EXAMPLES))
    method = service.channel.unary_stream("/mint.v1.TrainerService/RunRecipe")
    with pytest.raises(MintError) as err:
        list(rpc_stream(method, _old_run_recipe_naming(str(readable)), metadata=service.metadata))
    assert err.value.code is Code.UNIMPLEMENTED, err.value
    assert not _policy_exists(service, "probe"), "nothing trained"


def _policy_exists(service: ServiceClient, policy: str) -> bool:
    try:
        service.catalog.get_policy(policy)
    except MintError as err:
        assert err.code is Code.NOT_FOUND
        return False
    return True


BAD_DATA = {
    "not JSON": (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', r"mine.jsonl:2 is not a JSON line"),
    "not an object": (b'["a", "b"]\n', r"mine.jsonl:1 must be a JSON object, got list"),
    "completion not text": (jsonl([{"prompt": "a", "completion": 7}]), r"mine.jsonl:1 needs string prompt and completion, or messages"),
    "empty completion": (jsonl([{"prompt": "a", "completion": ""}]), r"mine.jsonl:1: the completion is empty"),
    "last message not the assistant's": (jsonl([{"messages": [{"role": "user", "content": "a"}]}]), r"the last message must be the assistant's .* got role 'user'"),
    "malformed messages": (jsonl([{"messages": [{"role": "assistant"}]}]), r"mine.jsonl:1: messages must be a non-empty list"),
    "nested past the parser": (b"[" * 2000 + b"]" * 2000, r"mine.jsonl:1 is not a JSON line"),
    "not UTF-8": (b'{"prompt": "\xff", "completion": "b"}\n', r"mine.jsonl is not UTF-8 text"),
    "only blank lines": (b"\n  \n", r"mine.jsonl holds no examples"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_examples_are_refused_naming_the_line(case):
    data, message = BAD_DATA[case]
    with pytest.raises(MintError, match=message) as err:
        parse_examples(data, "mine.jsonl")
    assert err.value.code is Code.INVALID_ARGUMENT


BAD_SETTINGS = {
    "no sft steps": (SFTConfig, dict(steps=0), r"steps is 0; it must be at least 1"),
    "nan learning rate": (SFTConfig, dict(learning_rate=float("nan")), r"learning_rate is nan; it must be in \(0, 1\]"),
    "publishing past the end": (SFTConfig, dict(steps=4, publish_every=5), r"publish_every is 5; it must be in 0..4"),
    "unknown RL task": (GRPOConfig, dict(task="mystery"), r"unknown RL task 'mystery'"),
    "unknown reward": (GRPOConfig, dict(reward_fn="mystery"), r"unknown reward function 'mystery'"),
    "clip out of range": (GRPOConfig, dict(clip_eps=1.0), r"clip_eps is 1.0; it must be in \[0, 1\)"),
    "infinite kl": (GRPOConfig, dict(kl_coef=float("inf")), r"kl_coef is inf; it must be a finite number >= 0"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_bad_settings_are_refused_when_the_config_is_built(case):
    config, settings, message = BAD_SETTINGS[case]
    with pytest.raises(MintError, match=message) as err:
        config(**settings)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_mint_train_sft_reads_its_data_file_on_the_client(stack, tmp_path, mint_train):
    server, service = stack
    data = tmp_path / "mine.jsonl"
    data.write_bytes(jsonl(EXAMPLES))

    def train(policy: str, *args: str):
        return mint_train(server.address, server.admin_key, "sft", "--policy", policy, "--steps", "2", "--batch-size", "2", "--rank", "4", *args)

    done = train("from-cli", "--data", str(data))
    assert done.code == 0, done.printed
    assert service.catalog.get_policy("from-cli").head_number == 1

    data.write_bytes(b'{"prompt": "a"\n')
    done = train("refused", "--data", str(data))
    assert (done.code, "mine.jsonl:1 is not a JSON line" in done.printed) == (1, True), done.printed
    done = train("refused", "--data", str(tmp_path / "missing.jsonl"))
    assert (done.code, "cannot read --data" in done.printed) == (1, True), done.printed
    done = train("refused", "--data", str(data), "--task", "echo")
    assert (done.code, "give either --task (a built-in task) or --data" in done.printed) == (1, True), done.printed
    data.write_bytes(jsonl(EXAMPLES))
    done = train("refused", "--data", str(data), "--publish-every", "5")  # past the run's 2 steps
    assert (done.code, "publish_every is 5" in done.printed) == (1, True), done.printed
    # Refused before any session: the policy the refused runs named was never created.
    assert not _policy_exists(service, "refused")
