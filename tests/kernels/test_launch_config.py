import json

import pytest
import torch

from kernels.launch_config import CONFIG_DIR, config_file_name, launch_config


def test_config_file_names_follow_the_device_name():
    assert config_file_name("NVIDIA H200") == "NVIDIA_H200.json"
    assert config_file_name("NVIDIA GeForce RTX 4090") == "NVIDIA_GeForce_RTX_4090.json"


def test_decode_and_prefill_pick_their_entries():
    cpu = torch.device("cpu")
    decode, prefill = launch_config("shrink", cpu, 1), launch_config("shrink", cpu, 512)
    assert decode["BLOCK_M"] < prefill["BLOCK_M"]
    assert "max_segment_tokens" not in decode


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.json")), ids=lambda p: p.name)
def test_every_config_file_covers_every_op_and_size(path):
    configs = json.loads(path.read_text())
    keys = {
        "shrink": {"BLOCK_M", "BLOCK_R", "BLOCK_K"},
        "expand": {"BLOCK_M", "BLOCK_N", "BLOCK_R"},
        "weight_grad": {"BLOCK_M", "BLOCK_R", "BLOCK_K"},
    }
    for op, blocks in keys.items():
        entries = configs[op]
        assert entries[-1]["max_segment_tokens"] is None, f"{path.name}: {op} has no entry for large segments"
        for entry in entries:
            assert blocks | {"num_warps", "num_stages", "max_segment_tokens"} == set(entry), (
                path.name,
                op,
                entry,
            )
            # tl.dot needs every tile dimension >= 16 and a power of two.
            assert all(entry[b] >= 16 and entry[b] & (entry[b] - 1) == 0 for b in blocks), (
                path.name,
                op,
                entry,
            )
