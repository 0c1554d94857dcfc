"""The request-limits table, and the one check every incoming gRPC message passes before a handler sees it.

Every MinT server runs `check_request` on each request message (`mint.server`), so no handler receives a
string with a NUL character, an over-long text field, a prompt too big to tokenize, a `*_json` field
nested deeper than a parser should follow, or a map with more entries than anyone sends. The same table
bounds uploads (how many at once, how long one may sit idle) and the size of error messages. Refusals name
the field, the value's size and the limit's name, so an operator knows which knob a client ran into:

    INVALID_ARGUMENT: SetAliasRequest.reason is 10485760 bytes; the limit is 4096 (max_text_bytes)

Limits are per server and come from `RequestLimits.from_env()` (`MINT_LIMIT_<FIELD>`, e.g.
`MINT_LIMIT_MAX_PROMPT_BYTES=2097152`) at each service's entry point.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from mint.errors import invalid

_FD = _descriptor.FieldDescriptor


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class RequestLimits:
    max_text_bytes: int = 4096  # any string field not named below: names, refs, reasons, sources, keys
    max_prompt_bytes: int = 1024 * 1024  # a prompt's text (plain or all chat messages together), before tokenizing
    max_prompt_tokens: int = 131_072  # token ids in one prompt or scored sequence
    max_json_bytes: int = 256 * 1024  # each `*_json` field (adapter and base configs)
    max_json_depth: int = 32  # nesting of arrays and objects in a `*_json` field
    max_map_entries: int = 1024  # entries of any map field (metrics, loss inputs, module shapes)
    max_uploads_per_key: int = 16  # client-streaming calls (publishes, uploads) one non-service key has open
    max_uploads: int = 0  # client-streaming calls open on one server; 0: half its workers, the rest stay free
    upload_idle_s: float = 30.0  # longest wait for the next message of an upload
    max_error_bytes: int = 2048  # error messages are cut to this, so a status always fits its trailer

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 0 or (getattr(self, field.name) == 0 and field.name != "max_uploads"):
                raise invalid(f"request limit {field.name} must be positive, got {getattr(self, field.name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RequestLimits:
        env = os.environ if env is None else env
        values: dict[str, float | int] = {}
        for field in dataclasses.fields(cls):
            name = f"MINT_LIMIT_{field.name.upper()}"
            if name not in env:
                continue
            kind = float if field.type == "float" else int
            try:
                values[field.name] = kind(env[name])
            except ValueError:
                raise invalid(f"{name}={env[name]!r} is not {'a number' if kind is float else 'an integer'}") from None
        return cls(**values)


# Fields whose limit is not max_text_bytes, by full name; `*_json` string fields take max_json_bytes.
_PROMPT_TEXT = frozenset({"mint.v1.Prompt.text", "mint.v1.ChatMessage.content"})
_TOKEN_LISTS = frozenset({"mint.v1.TokenIds.ids"})
_TEXT, _PROMPT, _JSON = "text", "prompt", "json"


def check_request(message: Message, limits: RequestLimits) -> None:
    """INVALID_ARGUMENT for the first field of `message` (recursively) that breaks `limits`."""
    prompt = [0]  # prompt text bytes anywhere in the message: one budget
    try:
        _check(message, _plan(message.DESCRIPTOR), limits, prompt)
    except _Refusal as refusal:
        raise invalid(f"{type(message).__name__}.{'.'.join(reversed(refusal.path))} {refusal.reason}") from None
    if prompt[0] > limits.max_prompt_bytes:
        raise invalid(f"the prompt of {type(message).__name__} is {prompt[0]} bytes; the limit is {limits.max_prompt_bytes} (max_prompt_bytes)")


class _Refusal(Exception):
    """A broken limit, carrying the field path from the innermost field outwards (built only on failure)."""

    def __init__(self, reason: str):
        self.path: list[str] = []
        self.reason = reason


@dataclasses.dataclass(slots=True)
class _Plan:
    """Which fields of one message type to look at, and how: worked out once per type."""

    texts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    text_lists: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    messages: list[tuple[str, _descriptor.Descriptor]] = dataclasses.field(default_factory=list)
    message_lists: list[tuple[str, _descriptor.Descriptor]] = dataclasses.field(default_factory=list)
    maps: list[tuple[str, bool, _descriptor.Descriptor | str | None]] = dataclasses.field(default_factory=list)
    token_lists: list[str] = dataclasses.field(default_factory=list)


_PLANS: dict[str, _Plan] = {}


def _plan(descriptor: _descriptor.Descriptor) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is not None:
        return plan
    plan = _PLANS[descriptor.full_name] = _Plan()
    for field in descriptor.fields:
        if field.type == _FD.TYPE_STRING:
            kind = _PROMPT if field.full_name in _PROMPT_TEXT else _JSON if field.name.endswith("_json") else _TEXT
            (plan.text_lists if field.is_repeated else plan.texts).append((field.name, kind))
        elif field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            value_kind = value.message_type if value.type == _FD.TYPE_MESSAGE else _TEXT if value.type == _FD.TYPE_STRING else None
            plan.maps.append((field.name, key.type == _FD.TYPE_STRING, value_kind))
        elif field.type == _FD.TYPE_MESSAGE:
            (plan.message_lists if field.is_repeated else plan.messages).append((field.name, field.message_type))
        elif field.full_name in _TOKEN_LISTS:
            plan.token_lists.append(field.name)
    return plan


def _check(message: Message, plan: _Plan, limits: RequestLimits, prompt: list[int]) -> None:
    name = ""
    try:
        for name, kind in plan.texts:
            text = getattr(message, name)
            if text:
                _check_text(text, kind, limits, prompt)
        for name, kind in plan.text_lists:
            for text in getattr(message, name):
                _check_text(text, kind, limits, prompt)
        for name, descriptor in plan.messages:
            if message.HasField(name):
                _check(getattr(message, name), _plan(descriptor), limits, prompt)
        for name, descriptor in plan.message_lists:
            items = getattr(message, name)
            if items:
                sub = _plan(descriptor)
                for i, item in enumerate(items):
                    try:
                        _check(item, sub, limits, prompt)
                    except _Refusal as refusal:
                        refusal.path.append(f"[{i}]")
                        raise
        for name, string_keys, value_kind in plan.maps:
            _check_map(getattr(message, name), string_keys, value_kind, limits, prompt)
        for name in plan.token_lists:
            count = len(getattr(message, name))
            if count > limits.max_prompt_tokens:
                raise _Refusal(f"has {count} token ids; the limit is {limits.max_prompt_tokens} (max_prompt_tokens)")
    except _Refusal as refusal:
        if refusal.path and refusal.path[-1].startswith("["):  # an item of this field: name[i]
            refusal.path[-1] = name + refusal.path[-1]
        else:
            refusal.path.append(name)
        raise


def _check_map(entries, string_keys: bool, value_kind, limits: RequestLimits, prompt: list[int]) -> None:
    if len(entries) > limits.max_map_entries:
        raise _Refusal(f"has {len(entries)} entries; the limit is {limits.max_map_entries} (max_map_entries)")
    if not entries or not (string_keys or value_kind):
        return
    sub = _plan(value_kind) if isinstance(value_kind, _descriptor.Descriptor) else None
    for key, value in entries.items():
        try:
            if string_keys:
                _check_text(key, _TEXT, limits, prompt)
            if sub is not None:
                _check(value, sub, limits, prompt)
            elif value_kind == _TEXT:
                _check_text(value, _TEXT, limits, prompt)
        except _Refusal as refusal:
            refusal.path.append(f"[{str(key)[:40]!r}]")
            raise


def _check_text(text: str, kind: str, limits: RequestLimits, prompt: list[int]) -> None:
    if "\x00" in text:
        raise _Refusal("contains a NUL character (\\x00); text fields never may")
    if kind is _TEXT:
        if len(text) * 4 <= limits.max_text_bytes:  # within the limit whatever the characters
            return
        size = _utf8_len(text)
        if size > limits.max_text_bytes:
            raise _Refusal(f"is {size} bytes; the limit is {limits.max_text_bytes} (max_text_bytes)")
    elif kind is _PROMPT:
        prompt[0] += _utf8_len(text)
    else:
        size = _utf8_len(text)
        if size > limits.max_json_bytes:
            raise _Refusal(f"is {size} bytes; the limit is {limits.max_json_bytes} (max_json_bytes)")
        if json_depth(text, limits.max_json_depth) > limits.max_json_depth:
            raise _Refusal(f"nests arrays or objects more than {limits.max_json_depth} deep (max_json_depth)")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str, stop_above: int | None = None) -> int:
    """How deeply arrays and objects nest in JSON `text` (0 for a scalar); stops counting above `stop_above`.
    Brackets inside strings do not count. Runs without recursion, so any input is safe to measure."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    return deepest
        else:
            depth -= 1
    return deepest


def cut_message(message: str, limit: int) -> str:
    """`message` shortened to at most `limit` UTF-8 bytes, saying that it was cut."""
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[: max(0, limit - 40)].decode(errors="ignore") + f"... [{len(data)} bytes, cut]"
