"""Adapter parsing refuses what it cannot use with INVALID_ARGUMENT and a message naming the fault: absurd
ranks, alphas and scales; JSON nested deeper than the format needs; pickles posing as weights."""

from __future__ import annotations

import io
import json
import pickle
import struct

import pytest
import torch

from mint.adapters import AdapterConfig
from mint.adapters.config import SCALING_RANGE
from mint.adapters.safetensors_file import read_header, serialize
from mint.errors import Code, MintError

GOOD = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}


def refusal(fn, *args) -> str:
    with pytest.raises(MintError) as info:
        fn(*args)
    assert info.value.code is Code.INVALID_ARGUMENT
    return info.value.message


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"lora_alpha": 1e300}, "1e+300"),
        ({"lora_alpha": 65537}, "65537"),
        ({"lora_alpha": float("nan")}, "nan"),
        ({"lora_alpha": float("inf")}, "inf"),
        ({"lora_alpha": 0}, "0"),
        ({"lora_alpha": -16}, "-16"),
        ({"lora_alpha": True}, "True"),
        ({"lora_alpha": "16"}, "'16'"),
        ({"lora_alpha": 8193, "r": 8}, "scale 1024.12"),  # alpha / r above 1024
        ({"lora_alpha": 1e-4, "r": 8}, "scale 1.25e-05"),  # below fp16's smallest normal
        ({"lora_alpha": 40000, "r": 256, "use_rslora": True}, "sqrt(r) = 16"),  # 40000 / 16 = 2500
        ({"r": 0}, "0"),
        ({"r": -4}, "-4"),
        ({"r": 8.0}, "8.0"),
        ({"r": 2**40}, str(2**40)),
        ({"use_rslora": "yes"}, "'yes'"),
    ],
)
def test_ranks_alphas_and_scales_outside_their_range_are_refused(changes, named):
    message = refusal(AdapterConfig.from_json, json.dumps({**GOOD, **changes}))
    assert named in message, message


def test_the_scale_range_holds_at_its_ends():
    low, high = SCALING_RANGE
    assert AdapterConfig(r=4, lora_alpha=4 * high, target_modules=("q_proj",)).scaling == high
    assert AdapterConfig(r=16, lora_alpha=4 * low, target_modules=("q_proj",), use_rslora=True).scaling == low


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [9, 30_000])  # 30,000: past the interpreter stack, within the size limit
def test_adapter_config_nesting_is_bounded(depth):
    text = json.dumps({**GOOD, "task_type": "CAUSAL_LM"})[:-1] + f', "extra": {_nested(depth)}}}'
    assert "deep" in refusal(AdapterConfig.from_json, text)
    assert "deep" in refusal(AdapterConfig.from_json, text.encode())


def _safetensors(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def _read(data: bytes):
    return read_header(io.BytesIO(data), len(data))


@pytest.mark.parametrize(
    "header",
    [
        {"__metadata__": {"a": "b"}, "x": {"dtype": "F32", "shape": [], "data_offsets": [0, 0], "extra": None}}
        | {"deep": json.loads(_nested(4))},
        {"__metadata__": json.loads(_nested(50))},
        {"t": {"dtype": "F32", "shape": json.loads(_nested(3)), "data_offsets": [0, 0]}},
    ],
)
def test_safetensors_header_nesting_is_bounded(header):
    assert "deep" in refusal(_read, _safetensors(header))


@pytest.mark.parametrize("where", ["__metadata__", "tensor"])
def test_a_header_nested_past_the_interpreter_stack_is_refused_not_a_recursion_error(where):
    deep = _nested(200_000)
    raw = (f'{{"__metadata__": {{"a": {deep}}}}}' if where == "__metadata__" else f'{{"t": {{"shape": {deep}}}}}').encode()
    assert "deep" in refusal(_read, struct.pack("<Q", len(raw)) + raw)


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"w": [1, 2, 3]}, protocol=2),
        pickle.dumps({"w": [1, 2, 3]}, protocol=4),
        pickle.dumps({"w": list(range(10_000))}, protocol=5),
        pickle.dumps(None),  # shorter than the 8-byte length
        b"PK\x03\x04" + b"\0" * 100,
    ],
)
def test_pickles_are_named_as_pickles(data):
    message = refusal(_read, data)
    assert "pickle" in message and "never unpickles" in message and "header" not in message, message


def test_torch_save_output_is_named_as_a_pickle():
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    assert "pickle" in refusal(_read, buffer.getvalue())
    legacy = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    assert "pickle" in refusal(_read, legacy.getvalue())


def test_a_safetensors_file_whose_length_starts_like_a_pickle_is_read():
    """A 640-byte header's length is 0x80 0x02 ...: the bytes a protocol-2 pickle starts with."""
    data = serialize({"w": torch.zeros(2, 3)})
    (n,) = struct.unpack("<Q", data[:8])
    padded = data[8 : 8 + n] + b" " * (640 - n)
    data = struct.pack("<Q", 640) + padded + data[8 + n :]
    assert data[:2] == b"\x80\x02"
    assert list(_read(data).tensors) == ["w"]
