"""Built-in tasks: small SFT sets (for the demo and tests) and verifiable prompt sets with rewards (GRPO).

Rewards are registered by name (`@reward("name")`) and take (prompt, completion, answer) -> float.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

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


def sft_examples(task: str = "", path: str = "") -> list[Example]:
    """A built-in task, or JSONL lines of {"prompt", "completion"} or {"messages": [...]} (the last
    assistant message is the completion; earlier messages form the prompt)."""
    if task:
        if task not in SFT_TASKS:
            raise invalid(f"unknown SFT task {task!r}; built-in tasks: {sorted(SFT_TASKS)}")
        return SFT_TASKS[task]
    if not path:
        raise invalid("give a built-in task or a JSONL data path")
    examples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise invalid(f"{path}:{number} is not JSON: {err}") from None
        if "messages" in row:
            messages = row["messages"]
            if not messages or messages[-1].get("role") != "assistant":
                raise invalid(f"{path}:{number}: the last message must be the assistant's")
            examples.append(Example(tuple(messages[:-1]), messages[-1]["content"]))
        elif "prompt" in row and "completion" in row:
            examples.append(Example(row["prompt"], row["completion"]))
        else:
            raise invalid(f"{path}:{number} needs prompt and completion, or messages")
    if not examples:
        raise invalid(f"{path} holds no examples")
    return examples
