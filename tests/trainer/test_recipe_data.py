"""RunRecipe's training data comes from the caller, in the request: a trainer never reads a path it is
given (it used to read sft.data_path as the server's user, so any member could probe and read its files).
Uploaded examples train; malformed, empty or oversized ones, and out-of-range settings, are INVALID_ARGUMENT
before the job starts. `mint train sft --data FILE` reads FILE on the client."""

from __future__ import annotations

import json

import pytest

from mint.cli import main as mint_cli
from mint.errors import Code, MintError
from mint.proto import trainer_pb2, trainer_pb2_grpc
from mint.sdk import ServiceClient
from mint.sdk.catalog import rpc_stream
from services.embedded import EmbeddedConfig, EmbeddedStack

MAX_DATA_BYTES = 4096
EXAMPLES = [{"prompt": "abc", "completion": " abc abc"}, {"messages": [{"role": "user", "content": "xyz"}, {"role": "assistant", "content": " xyz xyz"}]}]


@pytest.fixture(scope="module")
def stack(trainer_base, tmp_path_factory):
    config = EmbeddedConfig(
        model_path=str(trainer_base), data_dir=str(tmp_path_factory.mktemp("stack")), address="127.0.0.1:0",
        trainer={"max_recipe_data_bytes": MAX_DATA_BYTES},
    )
    stack = EmbeddedStack(config).start()
    service = ServiceClient(stack.address, stack.admin_key)
    yield stack, service
    service.close()
    stack.stop()


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def run_recipe(service: ServiceClient, request: trainer_pb2.RunRecipeRequest | bytes) -> list[trainer_pb2.RecipeProgress]:
    if isinstance(request, bytes):  # a request as an older client wrote it, fields this one no longer knows included
        method = service.channel.unary_stream("/mint.v1.TrainerService/RunRecipe", response_deserializer=trainer_pb2.RecipeProgress.FromString)
        return list(rpc_stream(method, request, metadata=service.metadata))
    return list(rpc_stream(trainer_pb2_grpc.TrainerServiceStub(service.channel).RunRecipe, request, metadata=service.metadata))


def sft(policy: str, **recipe) -> trainer_pb2.RunRecipeRequest:
    session = trainer_pb2.CreateSessionRequest(policy=policy, rank=4, train_attn=True)
    return trainer_pb2.RunRecipeRequest(session=session, sft=trainer_pb2.SftRecipe(**recipe))


def test_uploaded_examples_train_and_publish(stack):
    _, service = stack
    progress = run_recipe(service, sft("uploaded", examples_jsonl=jsonl(EXAMPLES), steps=3, batch_size=2, learning_rate=1e-3))
    assert [p.step for p in progress] == [1, 2, 3] and progress[-1].done
    assert progress[-1].published_address == "mint://local/uploaded@1"
    assert all(p.metrics["loss"] > 0 for p in progress)


def _old_request_naming(path: str) -> bytes:
    """RunRecipeRequest{session: {policy: "probe"}, sft: {data_path: path}} in the old contract's bytes."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload  # every payload here is under 128 bytes

    return field(1, field(2, b"probe")) + field(2, field(1, path.encode()))


def test_a_server_path_is_never_read(stack, tmp_path):
    _, service = stack
    readable = tmp_path / "server-side.jsonl"
    readable.write_bytes(jsonl(EXAMPLES))
    answers = []
    for path in (str(readable), "/etc/shadow", str(tmp_path / "missing.jsonl")):
        with pytest.raises(MintError) as err:
            run_recipe(service, _old_request_naming(path))
        assert err.value.code is Code.INVALID_ARGUMENT
        answers.append(err.value.message)
    # The same answer whether the path exists, is unreadable or is missing: nothing to probe with.
    assert len(set(answers)) == 1 and "either builtin_task or examples_jsonl" in answers[0], answers
    assert not _policy_exists(service, "probe"), "no job started"


def _policy_exists(service: ServiceClient, policy: str) -> bool:
    try:
        service.catalog.get_policy(policy)
    except MintError as err:
        assert err.code is Code.NOT_FOUND
        return False
    return True


BAD = {
    "not JSON": (dict(examples_jsonl=b'{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n'), r"sft.examples_jsonl:2 is not a JSON line"),
    "not an object": (dict(examples_jsonl=b'["a", "b"]\n'), r"sft.examples_jsonl:1 must be a JSON object, got list"),
    "no completion": (dict(examples_jsonl=jsonl([{"prompt": "a"}])), r"sft.examples_jsonl:1 needs string prompt and completion, or messages"),
    "completion not text": (dict(examples_jsonl=jsonl([{"prompt": "a", "completion": 7}])), r"needs string prompt and completion"),
    "empty completion": (dict(examples_jsonl=jsonl([{"prompt": "a", "completion": ""}])), r"sft.examples_jsonl:1: the completion is empty"),
    "last message not the assistant's": (dict(examples_jsonl=jsonl([{"messages": [{"role": "user", "content": "a"}]}])),
                                         r"the last message must be the assistant's .* got role 'user'"),
    "malformed messages": (dict(examples_jsonl=jsonl([{"messages": [{"role": "assistant"}]}])), r"messages must be a non-empty list"),
    "nested past the parser": (dict(examples_jsonl=b"[" * 2000 + b"]" * 2000), r"sft.examples_jsonl:1 is not a JSON line"),
    "not UTF-8": (dict(examples_jsonl=b'{"prompt": "\xff", "completion": "b"}\n'), r"sft.examples_jsonl is not UTF-8 text"),
    "only blank lines": (dict(examples_jsonl=b"\n  \n"), r"sft.examples_jsonl holds no examples"),
    "empty": (dict(examples_jsonl=b""), r"either builtin_task or examples_jsonl"),
    "both a task and examples": (dict(builtin_task="echo", examples_jsonl=jsonl(EXAMPLES)), r"either builtin_task or examples_jsonl"),
    "too large": (dict(examples_jsonl=jsonl(EXAMPLES * 100)), rf"sft.examples_jsonl is \d+ bytes; the limit is {MAX_DATA_BYTES} \(max_recipe_data_bytes\)"),
    "unknown task": (dict(builtin_task="mystery"), r"unknown SFT task 'mystery'"),
    "negative steps": (dict(builtin_task="echo", steps=-1), r"sft.steps is -1; it must be in 0..100000"),
    "negative batch": (dict(builtin_task="echo", batch_size=-2), r"sft.batch_size is -2"),
    "nan learning rate": (dict(builtin_task="echo", learning_rate=float("nan")), r"sft.learning_rate is nan; it must be in \(0, 1\]"),
    "publishing past the end": (dict(builtin_task="echo", steps=4, publish_every=5), r"sft.publish_every is 5; it must be in 0..4"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sft_requests_are_refused_before_the_job_starts(stack, case):
    _, service = stack
    recipe, message = BAD[case]
    with pytest.raises(MintError, match=message) as err:
        run_recipe(service, sft("refused", **recipe))
    assert err.value.code is Code.INVALID_ARGUMENT
    assert not _policy_exists(service, "refused"), "no job started"


GRPO_BAD = {
    "unknown task": (dict(task="mystery"), r"unknown RL task 'mystery'"),
    "unknown reward": (dict(reward_fn="mystery"), r"unknown reward function 'mystery'"),
    "group too large": (dict(group_size=1000), r"grpo.group_size is 1000; it must be in 0..64"),
    "negative temperature": (dict(temperature=-1.0), r"grpo.temperature is -1.0"),
    "clip out of range": (dict(clip_eps=1.0), r"grpo.clip_eps is 1.0; it must be in \[0, 1\)"),
    "infinite kl": (dict(kl_coef=float("inf")), r"grpo.kl_coef is inf"),
}


@pytest.mark.parametrize("case", GRPO_BAD)
def test_bad_grpo_requests_are_refused_before_the_job_starts(stack, case):
    _, service = stack
    recipe, message = GRPO_BAD[case]
    request = trainer_pb2.RunRecipeRequest(
        session=trainer_pb2.CreateSessionRequest(policy="refused-rl", rank=4, train_attn=True), grpo=trainer_pb2.GrpoRecipe(**recipe)
    )
    with pytest.raises(MintError, match=message) as err:
        run_recipe(service, request)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_mint_train_sft_reads_its_data_file_on_the_client(stack, tmp_path, capsys):
    server, service = stack
    data = tmp_path / "mine.jsonl"
    data.write_bytes(jsonl(EXAMPLES))
    common = ["--address", server.address, "--api-key", server.admin_key, "--steps", "2", "--batch-size", "2", "--rank", "4"]
    assert mint_cli(["train", "sft", "--policy", "from-cli", "--data", str(data), *common]) == 0
    printed(capsys)
    assert service.catalog.get_policy("from-cli").head_number == 1
    data.write_bytes(b'{"prompt": "a"\n')
    assert mint_cli(["train", "sft", "--policy", "from-cli", "--data", str(data), *common]) == 1
    assert "mine.jsonl:1 is not a JSON line" in printed(capsys)
    assert mint_cli(["train", "sft", "--policy", "from-cli", "--data", str(tmp_path / "missing.jsonl"), *common]) == 1
    assert "cannot read --data" in printed(capsys)
    assert service.catalog.get_policy("from-cli").head_number == 1


def printed(capsys) -> str:
    """What the CLI printed, its lines (wrapped to the terminal) joined again."""
    return " ".join(capsys.readouterr().out.split())
