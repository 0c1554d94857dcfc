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

from mint.errors import Code, MintError, invalid

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


def check_request(message: Message, limits: RequestLimits) -> None:
    """INVALID_ARGUMENT for the first field of `message` (recursively) that breaks `limits`."""
    prompt_bytes = _check(message, limits, type(message).__name__)
    if prompt_bytes > limits.max_prompt_bytes:
        raise _too_big(f"the prompt of {type(message).__name__}", prompt_bytes, limits.max_prompt_bytes, "max_prompt_bytes")


def _check(message: Message, limits: RequestLimits, path: str) -> int:
    """Checks every set field; returns the prompt text bytes found, which count against one budget."""
    prompt_bytes = 0
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if field.type == _FD.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                prompt_bytes += _check_map(field, value, limits, where)
            elif field.is_repeated:
                for i, item in enumerate(value):
                    prompt_bytes += _check(item, limits, f"{where}[{i}]")
            else:
                prompt_bytes += _check(value, limits, where)
        elif field.type == _FD.TYPE_STRING:
            texts = value if field.is_repeated else (value,)
            for text in texts:
                prompt_bytes += _check_text(field, text, limits, where)
        elif field.full_name in _TOKEN_LISTS and len(value) > limits.max_prompt_tokens:
            raise MintError(
                Code.INVALID_ARGUMENT, f"{where} has {len(value)} token ids; the limit is {limits.max_prompt_tokens} (max_prompt_tokens)"
            )
    return prompt_bytes


def _check_map(field: _FD, entries, limits: RequestLimits, where: str) -> int:
    if len(entries) > limits.max_map_entries:
        raise invalid(f"{where} has {len(entries)} entries; the limit is {limits.max_map_entries} (max_map_entries)")
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    prompt_bytes = 0
    for key, value in entries.items():
        if key_field.type == _FD.TYPE_STRING:
            _check_text(key_field, key, limits, f"{where} key")
        if value_field.type == _FD.TYPE_MESSAGE:
            prompt_bytes += _check(value, limits, f"{where}[{key[:40]!r}]")
        elif value_field.type == _FD.TYPE_STRING:
            _check_text(value_field, value, limits, f"{where}[{key[:40]!r}]")
    return prompt_bytes


def _check_text(field: _FD, text: str, limits: RequestLimits, where: str) -> int:
    if "\x00" in text:
        raise invalid(f"{where} contains a NUL character (\\x00); text fields never may")
    if field.full_name in _PROMPT_TEXT:
        return _utf8_len(text)  # checked against the whole prompt's budget
    if field.name.endswith("_json"):
        size = _utf8_len(text)
        if size > limits.max_json_bytes:
            raise _too_big(where, size, limits.max_json_bytes, "max_json_bytes")
        depth = json_depth(text, limits.max_json_depth)
        if depth > limits.max_json_depth:
            raise invalid(f"{where} nests arrays or objects more than {limits.max_json_depth} deep (max_json_depth)")
        return 0
    size = _utf8_len(text)
    if size > limits.max_text_bytes:
        raise _too_big(where, size, limits.max_text_bytes, "max_text_bytes")
    return 0


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


def _too_big(where: str, size: int, limit: int, name: str) -> MintError:
    return invalid(f"{where} is {size} bytes; the limit is {limit} ({name})")


def cut_message(message: str, limit: int) -> str:
    """`message` shortened to at most `limit` UTF-8 bytes, saying that it was cut."""
    data = message.encode()
    if len(data) <= limit:
        return message
    return data[: max(0, limit - 40)].decode(errors="ignore") + f"... [{len(data)} bytes, cut]"
