"""Launch configurations of the Triton LoRA kernels, one JSON file per GPU model in `configs/`.

A file is named after `torch.cuda.get_device_name()` with every run of non-alphanumerics replaced by
`_` (e.g. `NVIDIA_H200.json`); `default.json` serves any device without one, and the interpreter.
Each op maps to a list of entries tried in order: the first whose `max_segment_tokens` (null: no limit)
is at least the step's largest segment wins, so decode and prefill can use different tiles.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


def config_file_name(device_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_") + ".json"


@functools.cache
def _device_configs(device_type: str, device_index: int | None) -> dict:
    path = CONFIG_DIR / "default.json"
    if device_type == "cuda":
        named = CONFIG_DIR / config_file_name(torch.cuda.get_device_name(device_index))
        if named.exists():
            path = named
    return json.loads(path.read_text())


def launch_config(op: str, device: torch.device, max_segment_tokens: int) -> dict[str, int]:
    """Block sizes and launch options for `op` ("shrink", "expand", "weight_grad") on `device`."""
    entries = _device_configs(device.type, device.index)[op]
    for entry in entries:
        limit = entry["max_segment_tokens"]
        if limit is None or max_segment_tokens <= limit:
            return {name: value for name, value in entry.items() if name != "max_segment_tokens"}
    raise ValueError(f"no {op} config covers segments of {max_segment_tokens} tokens: {entries}")
