import torch

from kernels import LoRAMeta, MoELoRAMeta, SegmentRun


def test_build_groups_tokens_by_slot_stably():
    slots = torch.tensor([3, 0, 1, 3, 2, 0, 1, 5])
    meta = LoRAMeta.build(slots)
    assert meta.sorted_token_ids.tolist() == [2, 6, 4, 0, 3, 7]
    assert meta.sorted_slots.tolist() == [1, 1, 2, 3, 3, 5]
    assert meta.active_slots.tolist() == [1, 2, 3, 5]
    assert meta.slot_counts.tolist() == [2, 1, 2, 1]
    assert meta.slot_starts.tolist() == [0, 2, 3, 5]
    assert (meta.num_tokens, meta.num_active, meta.max_slot_tokens) == (8, 4, 2)
    assert not meta.no_lora and not meta.in_slot_order
    assert meta.runs == (
        SegmentRun(token_start=0, tokens_per_key=2, first_key=1, num_keys=1),
        SegmentRun(token_start=2, tokens_per_key=1, first_key=2, num_keys=1),
        SegmentRun(token_start=3, tokens_per_key=2, first_key=3, num_keys=1),
        SegmentRun(token_start=5, tokens_per_key=1, first_key=5, num_keys=1),
    )


def test_runs_join_adjacent_slots_with_equal_counts():
    # Decode with one token per adapter in slots 1..4, then slot 6 twice and 7 twice.
    slots = torch.tensor([4, 2, 7, 1, 3, 6, 6, 7])
    meta = LoRAMeta.build(slots)
    assert meta.runs == (
        SegmentRun(token_start=0, tokens_per_key=1, first_key=1, num_keys=4),
        SegmentRun(token_start=4, tokens_per_key=2, first_key=6, num_keys=2),
    )


def test_sorted_batch_with_adapters_everywhere_is_in_slot_order():
    assert LoRAMeta.build(torch.tensor([1, 1, 2, 5])).in_slot_order
    assert not LoRAMeta.build(torch.tensor([0, 1, 2])).in_slot_order
    assert not LoRAMeta.build(torch.tensor([2, 1])).in_slot_order


def test_no_adapter_tokens_take_the_fast_path():
    for slots in (torch.zeros(5, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)):
        meta = LoRAMeta.build(slots)
        assert meta.no_lora and meta.num_active == 0 and meta.runs == ()
        assert meta.sorted_token_ids.numel() == 0


def test_run_ranks_take_the_largest_rank_and_follow_in_place_updates():
    slots = torch.tensor([1, 2, 3, 5])
    ranks = torch.tensor([0, 4, 8, 2, 0, 16])
    meta = LoRAMeta.build(slots, ranks)
    assert [(r.first_key, r.num_keys) for r in meta.runs] == [(1, 4)]
    assert meta.run_ranks(ranks) == (16,)
    ranks[5] = 2  # a slot reloaded with a lower-rank adapter
    assert meta.run_ranks(ranks) == (8,)


def test_runs_join_scattered_slots_with_equal_counts_and_list_their_keys():
    # Decode over a large slot pool: one token each in slots 2, 3, 7 and 9, then a prefill of 3 in slot 4.
    slots = torch.tensor([9, 4, 2, 7, 4, 3, 4])
    meta = LoRAMeta.build(slots)
    assert meta.runs == (
        SegmentRun(token_start=0, tokens_per_key=1, first_key=2, num_keys=2),
        SegmentRun(token_start=2, tokens_per_key=3, first_key=4, num_keys=1),
        SegmentRun(token_start=5, tokens_per_key=1, first_key=7, num_keys=2, keys=(7, 9)),
    )
    scattered = LoRAMeta.build(torch.tensor([9, 2, 7, 3]))
    (run,) = scattered.runs
    assert run.keys == (2, 3, 7, 9) and list(run.key_list) == [2, 3, 7, 9]
    assert scattered.key_index(run).tolist() == [2, 3, 7, 9]
    assert run.pieces() == [
        SegmentRun(token_start=0, tokens_per_key=1, first_key=2, num_keys=2),
        SegmentRun(token_start=2, tokens_per_key=1, first_key=7, num_keys=1),
        SegmentRun(token_start=3, tokens_per_key=1, first_key=9, num_keys=1),
    ]


def test_moe_rows_are_keyed_by_slot_and_expert():
    token_slots = torch.tensor([2, 0, 1])
    topk_ids = torch.tensor([[3, 0], [1, 2], [0, 3]])
    meta = MoELoRAMeta.build(token_slots, topk_ids, num_experts=4)
    # rows: (t0,e3) key 11, (t0,e0) key 8, t1 unrouted, (t2,e0) key 4, (t2,e3) key 7
    assert meta.rows.active_slots.tolist() == [4, 7, 8, 11]
    assert meta.rows.sorted_token_ids.tolist() == [4, 5, 1, 0]
    assert meta.sorted_source_tokens.tolist() == [2, 2, 0, 0]
    assert meta.rows.sorted_slots.tolist() == [1, 1, 2, 2]
    assert meta.rows.num_tokens == 6 and not meta.no_lora
