"""A base saved by transformers without tokenizer files is served and trained on token ids: token prompts,
logprobs, adapters, training and sampled token ids work; text and chat prompts, stop strings and the
tokenizer download are FAILED_PRECONDITION naming the missing file; sampled text is empty."""

from __future__ import annotations

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from mint.errors import Code, MintError
from mint.proto import common_pb2, engine_pb2, engine_pb2_grpc
from mint.sdk import AdamParams, SamplingParams, ServiceClient, next_token_datum
from mint.server import channel
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.engine.config import EngineConfig
from services.engine.engine import collect
from services.engine.main import create_server
from tests.engine.conftest import publish, random_adapter

PROMPT = [5, 17, 42, 99, 7]
GREEDY = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, logprobs=True)


@pytest.fixture(scope="module")
def bare_base_dir(tmp_path_factory):
    """A tiny Llama as transformers saves it: config.json and model.safetensors, no tokenizer files."""
    path = tmp_path_factory.mktemp("bare") / "bare-llama"
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    assert not any(p.name.startswith("tokenizer") for p in path.iterdir())
    return path


def missing(base: str, path) -> str:
    return f"base model {base} has no tokenizer.json; send token ids, or add the tokenizer to {path}"


def test_an_engine_serves_token_calls_and_refuses_text_naming_the_missing_file(bare_base_dir, make_engine, source):
    engine = make_engine(bare_base_dir, base_model="bare")
    assert engine.tokenizer is None and 2 in engine.eos_ids  # eos from config.json
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=1), "acme/bare@1")
    for adapter in (None, spec):
        sample = collect(engine.sample(adapter, PROMPT, GREEDY), 60)[0]
        assert len(sample.token_ids) == 4 and len(sample.logprobs) == 4 and sample.text == ""
        assert len(engine.compute_logprobs(adapter, [PROMPT], timeout_s=60)[0]) == len(PROMPT) - 1
    with pytest.raises(MintError) as info:
        engine.sample(None, PROMPT, SamplingParams(max_tokens=4, stop=("x",)))
    assert info.value.code is Code.FAILED_PRECONDITION and info.value.message == missing("bare", bare_base_dir)

    server, port = create_server(EngineConfig(model_path=str(bare_base_dir)), engine)
    server.start()
    ch = channel(f"127.0.0.1:{port}")
    try:
        stub = engine_pb2_grpc.EngineServiceStub(ch)
        params = common_pb2.SamplingParams(max_tokens=3, ignore_eos=True)
        chunks = list(stub.Sample(engine_pb2.EngineSampleRequest(prompt=common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=PROMPT)), params=params)))
        assert sum(len(c.token_ids) for c in chunks) == 3 and all(c.text == "" for c in chunks)
        chat = common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(role="user", content="hi")])
        for prompt in (common_pb2.Prompt(text="hello"), common_pb2.Prompt(chat=chat)):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Sample(engine_pb2.EngineSampleRequest(prompt=prompt, params=params)))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert refused.value.details() == missing("bare", bare_base_dir)
    finally:
        ch.close()
        server.stop(None)


def test_the_embedded_stack_trains_and_samples_a_base_without_a_tokenizer(bare_base_dir, tmp_path):
    """What `mint serve --model DIR` runs: the engine and the trainer both load the bare base."""
    stack = EmbeddedStack(EmbeddedConfig(model_path=str(bare_base_dir), data_dir=str(tmp_path / "data"), address="127.0.0.1:0")).start()
    client = ServiceClient(stack.address, stack.admin_key)
    try:
        training = client.create_lora_training_client("bare-llama", "bare-bot", rank=4)
        datum = next_token_datum(PROMPT, [9, 10, 11])
        assert training.forward_backward([datum]).loss_fn_outputs
        training.optim_step(AdamParams(learning_rate=1e-3))
        sampler = training.save_weights_and_get_sampling_client("step-1")
        answer = sampler.sample(PROMPT, 1, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
        assert len(answer.sequences[0].tokens) == 3 and answer.sequences[0].text == ""
        assert len(sampler.compute_logprobs([PROMPT])[0]) == len(PROMPT) - 1
        for call in (lambda: sampler.sample("hello", 1, SamplingParams(max_tokens=3)), client.get_tokenizer):
            with pytest.raises(MintError) as refused:
                call()
            assert refused.value.code is Code.FAILED_PRECONDITION and refused.value.message == missing("bare-llama", bare_base_dir)
    finally:
        client.close()
        stack.stop()
