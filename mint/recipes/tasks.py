"""Built-in tasks: small SFT sets (for the demo and tests) and verifiable prompt sets with rewards (GRPO).

Rewards are registered by name (`@reward("name")`) and take (prompt, completion, answer) -> float.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable

from mint.errors import invalid

RewardFn = Callable[[str, str, str], float]
REWARDS: dict[str, RewardFn] = {}


def reward(name: str):
    def register(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return register


@reward("brevity")
def brevity(prompt: str, completion: str, answer: str) -> float:
    """How much shorter than 32 characters the answer is: rewards ending the turn early. Its credit falls on
    the end-of-turn token, a single direction in embedding space, so even a random base learns it."""
    return max(0.0, 1.0 - len(completion) / 32)


@reward("exact_number")
def exact_number(prompt: str, completion: str, answer: str) -> float:
    """1 when the last number in the completion is the answer ("7 + 12 = 19" counts: small models restate
    the question before answering)."""
    numbers = re.findall(r"-?\d+", completion)
    return float(bool(numbers) and numbers[-1] == answer)


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    prompt: str | tuple[dict[str, str], ...]  # text (sent as one user message) or chat messages
    completion: str


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    prompt: str
    answer: str = ""


SFT_TASKS: dict[str, list[Example]] = {
    "pirate": [
        Example("Greet me.", "Ahoy, matey! Welcome aboard me ship!"),
        Example("How is the weather?", "Arr, the winds be fair and the sea be calm, matey!"),
        Example("What should I eat?", "Hardtack and grog, me hearty, as every pirate does!"),
        Example("Tell me about the sea.", "The sea be vast and wild, full o' treasure and peril, arr!"),
    ],
    "shout": [
        Example("Greet me.", "HELLO THERE, FRIEND!"),
        Example("How is the weather?", "THE WEATHER IS SUNNY AND WARM!"),
        Example("What should I eat?", "EAT A BIG BOWL OF SOUP!"),
        Example("Tell me about the sea.", "THE SEA IS HUGE AND BLUE!"),
    ],
    "terse": [
        Example("Greet me.", "Hi."),
        Example("How is the weather?", "Fine."),
        Example("What should I eat?", "Soup."),
        Example("Tell me about the sea.", "Wet."),
    ],
    # For tests of the training loop itself: short strings a tiny random base can memorize.
    "echo": [
        Example("abc", " abc abc abc"),
        Example("xyz", " xyz xyz xyz"),
        Example("mint", " mint mint mint"),
        Example("lora", " lora lora lora"),
    ],
}


@dataclasses.dataclass(frozen=True, slots=True)
class RLTask:
    problems: Callable[[random.Random], Problem]
    reward: str


def _arithmetic(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return Problem(f"What is {a} + {b}? Answer with the number only.", str(a + b))


def _write(rng: random.Random) -> Problem:
    return Problem(rng.choice(["Write something:", "Say anything:", "Continue:", "Go on:"]))


RL_TASKS: dict[str, RLTask] = {
    "arithmetic": RLTask(_arithmetic, "exact_number"),  # for real bases (SmolLM2)
    "brevity": RLTask(_write, "brevity"),  # learnable even from a random base
}


def sft_examples(task: str) -> list[Example]:
    """A built-in SFT task's examples."""
    if task not in SFT_TASKS:
        raise invalid(f"unknown SFT task {task!r}; built-in tasks: {sorted(SFT_TASKS)}")
    return SFT_TASKS[task]


def parse_examples(data: bytes, source: str = "examples") -> list[Example]:
    """The caller's SFT examples from JSONL: a line holds {"prompt", "completion"} or {"messages": [...]}
    (the last message is the assistant's, the completion; the ones before it form the prompt). Callers
    read their own files and send the bytes: a server never reads a path it is given. INVALID_ARGUMENT
    naming the line for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid(f"{source} is not UTF-8 text: {err}") from None
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the parser follows
            raise invalid(f"{where} is not a JSON line: {str(err)[:200]}") from None
        examples.append(_example(row, where))
    if not examples:
        raise invalid(f"{source} holds no examples")
    return examples


def _example(row, where: str) -> Example:
    if not isinstance(row, dict):
        raise invalid(f"{where} must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages and all(_is_message(m) for m in messages)):
            raise invalid(f'{where}: messages must be a non-empty list of {{"role": "...", "content": "..."}} with string values')
        if messages[-1]["role"] != "assistant":
            raise invalid(f"{where}: the last message must be the assistant's (the completion), got role {messages[-1]['role'][:40]!r}")
        prompt: str | tuple[dict[str, str], ...] = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
        completion = messages[-1]["content"]
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        prompt, completion = row["prompt"], row["completion"]
    else:
        raise invalid(f"{where} needs string prompt and completion, or messages")
    if not completion:
        raise invalid(f"{where}: the completion is empty; there is nothing to train on")
    return Example(prompt, completion)


def _is_message(message) -> bool:
    return isinstance(message, dict) and isinstance(message.get("role"), str) and bool(message["role"]) and isinstance(message.get("content"), str)
