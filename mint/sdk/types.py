"""Plain Python types of the SDK, and their protobuf forms."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

from mint.params import AdamParams, SamplingParams
from mint.proto import common_pb2, trainer_pb2

__all__ = ["AdamParams", "SamplingParams"]  # shared with the services, defined in mint.params


@dataclasses.dataclass(slots=True)
class Datum:
    """One training example: input tokens and per-token loss inputs (Tinker's shape).

    loss_fn_inputs keys: target_tokens (ints), weights, logprobs (the sampler's), advantages (floats),
    each with one value per input token."""

    tokens: list[int]
    loss_fn_inputs: dict[str, list[float] | list[int]]

    def to_proto(self) -> trainer_pb2.Datum:
        inputs = {}
        for key, values in self.loss_fn_inputs.items():
            if key == "target_tokens":
                inputs[key] = common_pb2.TensorData(int_data=[int(v) for v in values], shape=[len(values)])
            else:
                inputs[key] = common_pb2.TensorData(float_data=[float(v) for v in values], shape=[len(values)])
        return trainer_pb2.Datum(tokens=list(self.tokens), loss_fn_inputs=inputs)


def next_token_datum(prompt: Sequence[int], completion: Sequence[int], **extra: Sequence[float]) -> Datum:
    """The datum that trains `completion` after `prompt`: inputs are all tokens but the last, targets are
    all but the first, and only completion tokens carry weight. `extra` (logprobs, advantages) gives one
    value per completion token."""
    tokens = list(prompt) + list(completion)
    # Input position i predicts tokens[i + 1]: a completion token when i + 1 >= len(prompt). Without a
    # prompt, the first completion token has nothing to be predicted from and is not trained.
    completion_at = [i + 1 - len(prompt) for i in range(len(tokens) - 1)]
    inputs: dict[str, list] = {
        "target_tokens": tokens[1:],
        "weights": [float(j >= 0) for j in completion_at],
    }
    for key, values in extra.items():
        values = [float(v) for v in values]
        inputs[key] = [values[j] if j >= 0 else 0.0 for j in completion_at]
    return Datum(tokens=tokens[:-1], loss_fn_inputs=inputs)


class Finish(enum.Enum):
    LENGTH = common_pb2.FINISH_REASON_LENGTH
    STOP = common_pb2.FINISH_REASON_STOP
    ABORTED = common_pb2.FINISH_REASON_ABORTED


@dataclasses.dataclass(slots=True)
class SampledSequence:
    tokens: list[int]
    text: str
    logprobs: list[float]
    finish: Finish | None = None


@dataclasses.dataclass(slots=True)
class SampleResponse:
    sequences: list[SampledSequence]
    prompt_tokens: int


@dataclasses.dataclass(slots=True)
class ForwardBackwardOutput:
    loss_fn_outputs: list[dict[str, list[float]]]
    metrics: dict[str, float]


def prompt_proto(prompt: str | Sequence[int] | Sequence[dict[str, str]]) -> common_pb2.Prompt:
    """Text, token ids, or chat messages ([{"role": ..., "content": ...}])."""
    if isinstance(prompt, str):
        return common_pb2.Prompt(text=prompt)
    items = list(prompt)
    if items and isinstance(items[0], dict):
        return common_pb2.Prompt(chat=common_pb2.ChatPrompt(messages=[common_pb2.ChatMessage(**m) for m in items]))
    return common_pb2.Prompt(tokens=common_pb2.TokenIds(ids=[int(t) for t in items]))
