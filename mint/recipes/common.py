"""What the recipes share: their per-step report, checks on their settings, and turning prompts into tokens
the way the base model expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mint.errors import invalid
from mint.models.tokenizer import Tokenizer


@dataclasses.dataclass(slots=True)
class StepReport:
    """What a recipe reports after each step (and what `mint train` shows)."""

    step: int
    metrics: dict[str, float]
    published: str = ""  # the mint:// address this step published, if it did


def require(name: str, value, ok: bool, valid: str) -> None:
    """A recipe setting checked when its config is built, before anything trains: INVALID_ARGUMENT naming
    the setting, its value and what would have been valid."""
    if not ok:
        raise invalid(f"{name} is {value!r}; it must be {valid}")


def prompt_tokens(tokenizer: Tokenizer, prompt: str | Sequence[dict[str, str]]) -> list[int]:
    """Chat-templated when the tokenizer has a template (a text prompt is one user message), else plain."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True), add_special_tokens=False)
    return tokenizer.encode(prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt))


def completion_tokens(tokenizer: Tokenizer, completion: str) -> list[int]:
    """The completion as the model should produce it, ending with its end-of-turn token."""
    tokens = tokenizer.encode(completion, add_special_tokens=False)
    return tokens + list(tokenizer.eos_token_ids[:1])
