"""Continuous batching behaviour: sampling options, shared prefixes, preemption, cancellation, slow and
failing adapter loads."""

from __future__ import annotations

import threading
import time

import pytest

from mint.errors import Code, MintError
from mint.sdk.types import Finish
from services.engine.engine import collect
from services.engine.sampling import SamplingParams
from tests.engine.conftest import publish, random_adapter, wait_resident

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]


def test_seeded_sampling_reproduces_and_samples_differ(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir)
    params = SamplingParams(max_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=123, n=3, ignore_eos=True, logprobs=True)
    first = collect(engine.sample(None, PROMPT, params), 30)
    second = collect(engine.sample(None, PROMPT, params), 30)
    assert {i: e.token_ids for i, e in first.items()} == {i: e.token_ids for i, e in second.items()}
    assert len({tuple(e.token_ids) for e in first.values()}) == 3
    assert all(len(e.logprobs) == 10 and all(lp <= 0 for lp in e.logprobs) for e in first.values())
    assert first[0].prompt_tokens == len(PROMPT)


def test_n_samples_share_the_prompt_and_match_independent_runs(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir, block_size=4)
    shared = collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=6, temperature=0.8, seed=5, n=4, ignore_eos=True)), 30)
    for index in range(4):
        # Sample i of seed s draws from the generator seeded s + i: the same as n=1 with seed s + i.
        alone = collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=6, temperature=0.8, seed=5 + index, ignore_eos=True)), 30)
        assert alone[0].token_ids == shared[index].token_ids
    assert engine.cache.allocator.num_free == engine.cache.num_blocks


def test_greedy_is_independent_of_batch_composition(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    alone = collect(engine.sample(None, PROMPT, params), 30)[0].token_ids
    with engine.hold():
        crowd = [engine.sample(None, PROMPT[: 3 + i], params) for i in range(6)] + [engine.sample(None, PROMPT, params)]
    assert collect(crowd[-1], 30)[0].token_ids == alone


def test_stop_strings_and_tokens(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir)
    free = collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)), 30)[0]
    stop_token = free.token_ids[4]
    stopped = collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(stop_token,))), 30)[0]
    assert stopped.finish is Finish.STOP and stopped.token_ids == free.token_ids[: free.token_ids.index(stop_token) + 1]
    text = free.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        by_text = collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=12, temperature=0.0, stop=(stop,), ignore_eos=True)), 30)[0]
        assert by_text.finish is Finish.STOP and stop not in by_text.text and text.startswith(by_text.text)


def test_preemption_under_a_small_kv_cache_keeps_results_exact(tiny_base_dir, make_engine):
    roomy = make_engine(tiny_base_dir)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    expected = [collect(roomy.sample(None, PROMPT[:5] + [i], params), 60)[0].token_ids for i in range(6)]
    # 24 blocks of 4 tokens: six sequences of 46 tokens need 72, so some must be preempted and recomputed.
    tight = make_engine(tiny_base_dir, block_size=4, kv_cache_bytes=24 * 4 * 2 * 4 * 2 * 64 * 4)
    assert tight.cache.num_blocks == 24
    with tight.hold():
        requests = [tight.sample(None, PROMPT[:5] + [i], params) for i in range(6)]
    assert [collect(r, 120)[0].token_ids for r in requests] == expected
    assert tight.planner.preemptions > 0
    assert tight.cache.allocator.num_free == 24


def test_cancel_frees_everything(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir)
    request = engine.sample(None, PROMPT, SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True))
    first = request.events.get(timeout=30)
    assert first.token_ids
    engine.cancel(request)
    collect(request, 30)
    deadline = time.monotonic() + 10
    while engine.cache.allocator.num_free != engine.cache.num_blocks:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not engine.planner.running


def test_a_loading_adapter_does_not_stall_resident_ones(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    resident = publish(source, random_adapter(engine.model_config, rank=4, seed=1), "t/fast@1")
    wait_resident(engine, resident)
    slow = publish(source, random_adapter(engine.model_config, rank=4, seed=2), "t/slow@1")
    source.gate = threading.Event()
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    waiting = engine.sample(slow, PROMPT, params)
    served = collect(engine.sample(resident, PROMPT, params), 30)
    assert len(served[0].token_ids) == 4
    assert not waiting.done and engine.residency.tier_of(slow.key) == "loading"
    source.gate.set()
    assert len(collect(waiting, 30)[0].token_ids) == 4


def test_a_failed_load_fails_its_requests_with_a_clear_error(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=3), "t/broken@7")
    source.broken.add(spec.sha256)
    with pytest.raises(MintError, match="t/broken@7 cannot be loaded: its blob could not be fetched") as info:
        collect(engine.sample(spec, PROMPT, SamplingParams(max_tokens=4)), 30)
    assert info.value.code is Code.UNAVAILABLE  # another engine, or a later try, may reach the blob
    assert engine.residency.counters.loads_failed == 1
    assert len(collect(engine.sample(None, PROMPT, SamplingParams(max_tokens=2)), 30)[0].token_ids) == 2


def test_corrupt_blob_is_data_loss(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir)
    spec = publish(source, random_adapter(engine.model_config, rank=4, seed=4), "t/corrupt@1")
    source.blobs[spec.sha256] = source.blobs[spec.sha256][:-3] + b"xyz"
    with pytest.raises(MintError) as info:
        collect(engine.sample(spec, PROMPT, SamplingParams(max_tokens=4)), 30)
    assert info.value.code is Code.DATA_LOSS


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], SamplingParams(max_tokens=4), "empty"),
        ([10**6], SamplingParams(max_tokens=4), "outside the vocabulary"),
        (PROMPT, SamplingParams(max_tokens=10**5), "max_model_len"),
    ],
)
def test_bad_requests_are_refused_up_front(tiny_base_dir, make_engine, prompt, params, message):
    engine = make_engine(tiny_base_dir)
    with pytest.raises(MintError, match=message) as info:
        engine.sample(None, prompt, params)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_adapter_rank_above_the_engine_limit_is_refused(tiny_base_dir, make_engine, source):
    engine = make_engine(tiny_base_dir, max_lora_rank=8)
    spec = publish(source, random_adapter(engine.model_config, rank=16, seed=5), "t/big@1")
    with pytest.raises(MintError, match="ranks up to 8"):
        engine.residency.check(spec)


def test_buffered_requests_report_each_sample_once_finished(tiny_base_dir, make_engine):
    engine = make_engine(tiny_base_dir)
    params = SamplingParams(max_tokens=6, temperature=0.0, n=2, ignore_eos=True, logprobs=True)
    streamed = collect(engine.sample(None, PROMPT, params), 30)
    request = engine.sample(None, PROMPT, params, buffered=True)
    events = []
    while (item := request.events.get(timeout=30)) is not None:
        events.append(item)
    assert sorted(e.index for e in events) == [0, 1]
    for event in events:
        assert event.finish is Finish.LENGTH and event.prompt_tokens == len(PROMPT)
        assert event.token_ids == streamed[event.index].token_ids and len(event.logprobs) == 6
