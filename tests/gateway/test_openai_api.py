"""The OpenAI-compatible HTTP API, through the real `openai` client (sync, async, streaming) against an
embedded stack: the base and two policies of one tenant, a second tenant that must not see them; logprobs
against MinT's own compute_logprobs; streamed answers against buffered ones; errors in OpenAI's JSON with
their statuses; and a client that goes away mid-stream freeing its engine work."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import openai
import pytest

from mint.errors import Code, MintError
from mint.models.config import ModelConfig
from mint.models.presets import init_base
from mint.sdk import SamplingParams, ServiceClient
from services.embedded import EmbeddedConfig, EmbeddedStack
from services.engine.servicer import engine_stats
from tests.engine.conftest import random_adapter

TINY = ModelConfig.from_name("tiny")
BOT = random_adapter(TINY, rank=4, seed=41, scale=0.5)
HELPER = random_adapter(TINY, rank=2, seed=42, modules=("q_proj", "v_proj"), scale=0.5)
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    init_base(root / "tiny", arch="llama", preset="tiny", seed=12)
    stack = EmbeddedStack(EmbeddedConfig(model_path=str(root / "tiny"), data_dir=str(root / "data"), address="127.0.0.1:0")).start()
    admin = ServiceClient(stack.address, stack.admin_key)
    keys = {}
    for tenant in ("acme", "rival"):
        admin.catalog.create_tenant(tenant)
        keys[tenant] = admin.catalog.create_api_key(tenant, "k")
    acme = ServiceClient(stack.address, keys["acme"])
    for policy, weights in (("bot", BOT), ("helper", HELPER)):
        acme.catalog.create_policy(policy, stack.base_model)
        acme.catalog.publish(policy, weights)
    acme.catalog.set_alias("bot", "prod", 1)
    yield stack, keys, acme
    acme.close()
    admin.close()
    stack.stop()


def client(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.http_url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def acme_ai(stack):
    stack, keys, _ = stack
    with client(stack, keys["acme"]) as ai:
        yield ai


@pytest.fixture(scope="module")
def tokenizer(stack):
    stack, _, acme = stack
    return acme.get_tokenizer()


def models(stack):
    return [stack[0].base_model, "acme/bot@prod", "helper"]


def test_models_lists_the_base_and_the_tenants_policies_with_their_aliases(stack, acme_ai):
    stack, keys, _ = stack
    ids = [m.id for m in acme_ai.models.list().data]
    assert ids[0] == stack.base_model
    assert {"acme/bot", "acme/bot@latest", "acme/bot@prod", "acme/helper", "acme/helper@latest"} <= set(ids)
    with client(stack, keys["rival"]) as rival:
        assert not [m for m in rival.models.list().data if m.id.startswith("acme/")]
    first = httpx.get(f"{stack.http_url}/v1/models", params={"limit": 2}, headers={"authorization": f"Bearer {keys['acme']}"}).json()
    assert len(first["data"]) >= 2 and first["has_more"]
    rest = httpx.get(f"{stack.http_url}/v1/models", params={"limit": 200, "after": first["next_page_token"]},
                     headers={"authorization": f"Bearer {keys['acme']}"}).json()
    assert [m["id"] for m in first["data"] + rest["data"]] == ids and not rest["has_more"]


def test_completions_and_chat_for_the_base_and_two_policies(stack, acme_ai):
    texts = {}
    for model in models(stack):
        completion = acme_ai.completions.create(model=model, prompt="once upon", max_tokens=6, temperature=0, extra_body={"ignore_eos": True})
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 6 and completion.usage.prompt_tokens > 0
        chat = acme_ai.chat.completions.create(model=model, messages=CHAT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage.completion_tokens == 5
        texts[model] = (completion.choices[0].text, chat.choices[0].message.content)
    assert len(set(texts.values())) == 3  # each adapter changes the answers


def test_answers_match_the_grpc_sdk_and_logprobs_match_compute_logprobs(stack, acme_ai, tokenizer):
    stack, _, acme = stack
    prompt = tokenizer.encode("the cat sat")
    for model in ("acme/bot@prod", "helper"):
        completion = acme_ai.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0, logprobs=3,
                                                extra_body={"ignore_eos": True})
        sampler = acme.create_sampling_client(model)
        tokens = sampler.sample(prompt, sampling_params=SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)).sequences[0].tokens
        logprobs = completion.choices[0].logprobs
        assert logprobs.tokens == [tokenizer.decode([t], skip_special_tokens=False) for t in tokens]
        expected = sampler.compute_logprobs([prompt + tokens])[0][len(prompt) - 1 :]
        assert logprobs.token_logprobs == pytest.approx(expected, abs=1e-5)
        for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
            assert 1 <= len(top) <= 3 and list(top.values()) == sorted(top.values(), reverse=True)  # alike-printing tokens merge
            assert top[token] == pytest.approx(value, abs=1e-6)  # greedy: the sampled token is the most likely

        chat = acme_ai.chat.completions.create(model=model, messages=CHAT, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
                                               extra_body={"ignore_eos": True})
        content = chat.choices[0].logprobs.content
        assert len(content) == 4
        assert all(c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-6) and len(c.top_logprobs) == 2 for c in content)
        assert all(math.isfinite(c.logprob) and c.logprob <= 0 for c in content)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 7, "top_p": 0.9}])
def test_a_streamed_answer_equals_the_buffered_one(acme_ai, sampling):
    for model in ("acme/bot@prod", "helper"):
        args = dict(model=model, max_tokens=8, n=2, extra_body={"ignore_eos": True}, **sampling)
        whole = acme_ai.chat.completions.create(messages=CHAT, **args)
        streamed = {0: "", 1: ""}
        finish = {}
        usage = None
        for chunk in acme_ai.chat.completions.create(messages=CHAT, stream=True, stream_options={"include_usage": True}, **args):
            for choice in chunk.choices:
                streamed[choice.index] += choice.delta.content or ""
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
            usage = chunk.usage or usage
        assert streamed == {c.index: c.message.content for c in whole.choices}
        assert finish == {0: "length", 1: "length"}
        assert usage.completion_tokens == whole.usage.completion_tokens == 16

        text = acme_ai.completions.create(prompt="abc", **args)
        pieces = {0: "", 1: ""}
        for chunk in acme_ai.completions.create(prompt="abc", stream=True, **args):
            pieces[chunk.choices[0].index] += chunk.choices[0].text
        assert pieces == {c.index: c.text for c in text.choices}


def test_several_prompts_answer_in_prompt_order(acme_ai):
    prompts = ["one", "two", "three"]
    together = acme_ai.completions.create(model="helper", prompt=prompts, max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    alone = [acme_ai.completions.create(model="helper", prompt=p, max_tokens=3, temperature=0, extra_body={"ignore_eos": True}) for p in prompts]
    assert [c.text for c in together.choices] == [a.choices[0].text for a in alone]
    assert together.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)


def test_the_async_client_streams(stack):
    stack, keys, _ = stack

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{stack.http_url}/v1", api_key=keys["acme"], max_retries=0) as ai:
            async def one(model):
                stream = await ai.chat.completions.create(model=model, messages=CHAT, max_tokens=4, temperature=0, stream=True,
                                                          extra_body={"ignore_eos": True})
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            return await asyncio.gather(*(one(m) for m in ("acme/bot@prod", "helper", "acme/bot@prod")))

    bot, helper, again = asyncio.run(run())
    assert bot == again and bot != helper


def test_a_retracted_revision_and_another_tenants_policy_answer_404(stack):
    stack, keys, acme = stack
    acme.catalog.create_policy("doomed", stack.base_model)
    ref = acme.catalog.publish("doomed", BOT).address
    with client(stack, keys["acme"]) as ai:
        ai.completions.create(model=ref, prompt="x", max_tokens=1)
        acme.catalog.retract(ref, "bad eval")
        with pytest.raises(openai.NotFoundError) as gone:
            ai.completions.create(model=ref, prompt="x", max_tokens=1)
        with pytest.raises(openai.NotFoundError):
            ai.chat.completions.create(model=ref, messages=CHAT, max_tokens=1, stream=True)
    assert gone.value.body["code"] == Code.NOT_FOUND.value and "retracted" in gone.value.body["message"]
    with client(stack, keys["rival"]) as rival:
        for model in ("acme/bot@prod", "acme/helper", "acme/bot@1"):
            with pytest.raises(openai.NotFoundError) as hidden:
                rival.chat.completions.create(model=model, messages=CHAT, max_tokens=1)
            assert hidden.value.status_code == 404


@pytest.mark.parametrize(
    ("args", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0}, "top_p"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stop": [""]}, "stop"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
        ({"max_tokens": 10**6}, None),  # the engine's check: past max_model_len
    ],
)
def test_bad_parameters_answer_400_naming_them(acme_ai, args, param):
    request = {"model": "helper", "messages": CHAT, "max_tokens": 2, **args}
    with pytest.raises(openai.BadRequestError) as bad:
        acme_ai.chat.completions.create(**request)
    assert bad.value.status_code == 400
    assert bad.value.body["type"] == "invalid_request_error" and bad.value.body["param"] == param
    assert bad.value.body["code"] == Code.INVALID_ARGUMENT.value


def test_missing_and_unknown_keys_answer_401(stack):
    stack, _, _ = stack
    no_key = httpx.post(f"{stack.http_url}/v1/completions", json={"model": "helper", "prompt": "x"})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    with client(stack, "mint_000000000000_nope") as ai, pytest.raises(openai.AuthenticationError):
        ai.models.list()


def _idle(stack) -> bool:
    stats = engine_stats(stack.engine)
    return stats.running == 0 and stats.waiting == 0 and stats.kv_blocks_free == stats.kv_blocks_total


def test_a_client_that_goes_away_mid_stream_frees_its_sequence(stack, acme_ai):
    stack, _, _ = stack
    before = engine_stats(stack.engine).tokens_generated
    stream = acme_ai.chat.completions.create(model="acme/bot@prod", messages=CHAT, max_tokens=1500, temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    assert engine_stats(stack.engine).running == 1  # still generating
    stream.close()
    deadline = time.monotonic() + 30
    while not _idle(stack):
        assert time.monotonic() < deadline, engine_stats(stack.engine)
        time.sleep(0.05)
    assert engine_stats(stack.engine).tokens_generated - before < 1500


class _LosingEngines:
    """The embedded engine connector, whose streams break after `after` chunks as a lost engine's would."""

    def __init__(self, inner, after: int):
        self.inner, self.after = inner, after

    def sample(self, address, request, timeout_s):
        stream = self.inner.sample(address, request, timeout_s)
        after = self.after

        class Breaking:
            def __iter__(self):
                for i, chunk in enumerate(stream):
                    if i == after:
                        stream.cancel()
                        raise MintError(Code.UNAVAILABLE, "engine local stopped answering")
                    yield chunk

            def cancel(self):
                stream.cancel()

        return Breaking()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_an_engine_lost_mid_stream_ends_the_stream_with_an_error_event(stack, acme_ai, monkeypatch):
    stack, _, _ = stack
    monkeypatch.setattr(stack.door.servicer, "engines", _LosingEngines(stack.door.servicer.engines, after=2))
    received = []
    with pytest.raises(openai.APIError) as lost:
        for chunk in acme_ai.chat.completions.create(model="helper", messages=CHAT, max_tokens=50, temperature=0, stream=True,
                                                     extra_body={"ignore_eos": True}):
            received.append(chunk)
    assert len(received) == 2
    assert "stopped answering" in lost.value.message
    monkeypatch.undo()
    deadline = time.monotonic() + 30
    while not _idle(stack):
        assert time.monotonic() < deadline
        time.sleep(0.05)



def test_a_key_without_the_sample_scope_cannot_sample_over_http(stack):
    stack, _, _ = stack
    admin = ServiceClient(stack.address, stack.admin_key)
    reader = admin.catalog.create_api_key("acme", "reader-only", scopes=["read"])
    admin.close()
    with client(stack, reader) as ai:
        assert "acme/helper" in [m.id for m in ai.models.list().data]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            ai.completions.create(model="helper", prompt="x", max_tokens=1)
    assert "sample" in denied.value.body["message"] and denied.value.body["type"] == "permission_error"
