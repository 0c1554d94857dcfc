"""The properties MinT's parsers keep on any input, as checks that tests and bench/fuzz.py both run.

Each check takes one input and returns whether the parser accepted it. It fails an assertion when a
property breaks, and lets any exception other than `MintError` escape: that is a crash.

- safetensors/PEFT (`check_adapter_file`): a file is accepted or refused with INVALID_ARGUMENT; an accepted
  one loads into exactly the tensors its validation promised (shapes, finite values); the header alone
  (`read_header`) agrees, and what it accepts tiles the data section.
- adapter_config.json (`check_adapter_config`): parsed or refused; a parsed config writes JSON that parses
  back to the same config.
- names and refs (`check_ref`, `check_names`): accepted exactly when a grammar written independently of
  mint/names.py (character by character, no regular expressions) accepts; an accepted ref prints as text
  that parses back to it; nothing outside ASCII is ever accepted.
- chat templates (`check_chat`): a conversation renders and encodes, or is refused; an encoded one decodes
  to exactly the rendered text, and holds as many control tokens as the same conversation with harmless
  contents (so contents never add a control token) unless the caller allowed special tokens in content.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import torch

from mint import names
from mint.adapters import AdapterConfig, BaseShapes, load_weights, validate_adapter
from mint.adapters.safetensors_file import read_header
from mint.errors import Code, MintError
from mint.models.config import ModelConfig
from mint.models.tokenizer import CHATML_TEMPLATE, Tokenizer
from mint.names import MAX_REVISION_NUMBER, SCHEME, PolicyName, RevisionRef
from tests.engine.conftest import random_adapter

TINY = ModelConfig.from_name("tiny")
BASE = BaseShapes(num_layers=TINY.num_layers, module_shapes=TINY.module_shapes())
# Valid adapters for the tiny base, to mutate: one module at rank 2, two at rank 4 with rsLoRA.
ADAPTERS = (
    random_adapter(TINY, rank=2, seed=1, modules=("q_proj",)),
    random_adapter(TINY, rank=4, seed=2, modules=("q_proj", "v_proj"), use_rslora=True),
)
# Templates that render contents as they are (ChatML), rewrite them (trim), and refuse some roles.
CHAT_TEMPLATES = {
    "chatml": CHATML_TEMPLATE,
    "trimming": CHATML_TEMPLATE.replace("message['content']", "(message['content'] | trim)"),
    "strict_roles": "{% for message in messages %}{% if message['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('roles are user, assistant or system') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
}
CLIENT_CODES = frozenset({Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND})
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_NAME_REST = _LOWER + _DIGITS + "._-"


def _refused(err: MintError, what: str) -> bool:
    assert err.code in CLIENT_CODES, f"{what} refused with {err.code.name}, not a client's code: {err.message}"
    assert err.message, f"{what} refused without a message"
    return False


# --- safetensors / PEFT ------------------------------------------------------------------------------------


def check_adapter_file(data: bytes, path: Path, config: AdapterConfig, base: BaseShapes) -> bool:
    """Write `data` to `path` (overwritten each time) and validate it as `config`'s weights for `base`."""
    header_ok = _check_header(data)
    path.write_bytes(data)
    try:
        validated = validate_adapter(config, path, base)
    except MintError as err:
        return _refused(err, "adapter file")
    assert header_ok, "validate_adapter accepted a file whose header read_header refuses"
    assert validated.size_bytes == len(data) == os.path.getsize(path)
    weights = load_weights(config, path)
    expected = {(layer, m) for layer in range(base.num_layers) for m in config.target_modules}
    assert set(weights.tensors) == expected, f"loaded {sorted(weights.tensors)}, validated for {sorted(expected)}"
    for (_, module), (a, b) in weights.tensors.items():
        d_in, d_out = base.module_shapes[module]
        assert tuple(a.shape) == (config.r, d_in) and tuple(b.shape) == (d_out, config.r), (module, a.shape, b.shape)
        assert bool(torch.isfinite(a).all() and torch.isfinite(b).all()), f"{module}: non-finite values passed validation"
    return True


def _check_header(data: bytes) -> bool:
    try:
        header = read_header(io.BytesIO(data), len(data))
    except MintError as err:
        return _refused(err, "safetensors header")
    data_size = len(data) - header.data_start
    assert sum(e.end - e.begin for e in header.tensors.values()) == data_size, "accepted tensors do not tile the data section"
    for entry in header.tensors.values():
        assert 0 <= entry.begin <= entry.end <= data_size
    return True


def check_adapter_config(text: str | bytes) -> bool:
    try:
        config = AdapterConfig.from_json(text)
    except MintError as err:
        return _refused(err, "adapter_config.json")
    assert config.r >= 1 and math.isfinite(config.scaling) and config.target_modules
    again = AdapterConfig.from_json(config.to_json())
    assert again == config, f"{config} wrote JSON that parses as {again}"
    return True


# --- names and refs ------------------------------------------------------------------------------------------


def grammar_name(text: str) -> bool:
    """1-64 of a-z 0-9 . _ -, starting with a letter or digit (ASCII only)."""
    return 1 <= len(text) <= 64 and text[0] in _LOWER + _DIGITS and all(c in _NAME_REST for c in text)


def grammar_alias(text: str) -> bool:
    return grammar_name(text) and text[0] in _LOWER


def grammar_number(text: str) -> int | None:
    if not 1 <= len(text) <= 10 or text[0] not in "123456789" or not all(c in _DIGITS for c in text):
        return None
    value = int(text)
    return value if value <= MAX_REVISION_NUMBER else None


def grammar_ref(text: str) -> tuple[str | None, str, int | None, str | None] | None:
    """(tenant, policy, number, alias) of a ref the documented grammar accepts, else None."""
    head, at, selector = text.partition("@")
    head = head[len(SCHEME) :] if head.startswith(SCHEME) else head
    parts = head.split("/")
    if len(parts) > 2:
        return None
    tenant, policy = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    if (tenant is not None and not grammar_name(tenant)) or not grammar_name(policy):
        return None
    if not at:
        return tenant, policy, None, "latest"
    number = grammar_number(selector)
    if number is not None:
        return tenant, policy, number, None
    return (tenant, policy, None, selector) if grammar_alias(selector) else None


def check_ref(text: str) -> bool:
    expected = grammar_ref(text)
    try:
        ref = RevisionRef.parse(text)
    except MintError as err:
        assert expected is None, f"RevisionRef.parse refused {text!r}, which the grammar accepts as {expected}"
        return _refused(err, "revision ref")
    assert text.isascii(), f"RevisionRef.parse accepted non-ASCII {text!r}"
    assert expected == (ref.policy.tenant, ref.policy.name, ref.number, ref.alias), f"{text!r} parsed as {ref}, grammar says {expected}"
    assert RevisionRef.parse(str(ref)) == ref, f"{text!r} -> {ref} does not parse back"
    assert PolicyName.parse(str(ref.policy)) == ref.policy
    return True


def check_names(text: str) -> bool:
    """check_name, check_alias and check_base_model_name against the grammar."""
    checks = ((lambda t: names.check_name("policy", t), grammar_name), (names.check_alias, grammar_alias), (names.check_base_model_name, _grammar_base))
    for check, grammar in checks:
        try:
            check(text)
        except MintError as err:
            assert not grammar(text), f"{text!r} refused, but the grammar accepts it"
            _refused(err, "name")
        else:
            assert grammar(text) and text.isascii(), f"{text!r} accepted, but the grammar refuses it"
    return grammar_name(text)


def _grammar_base(text: str) -> bool:
    letters = _LOWER + _LOWER.upper() + _DIGITS
    return 1 <= len(text) <= 128 and text[0] in letters and all(c in letters + "._/-" for c in text)


# --- chat templates ------------------------------------------------------------------------------------------


def check_chat(tokenizer: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True, allow_special: bool = False) -> bool:
    try:
        ids = tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt, allow_special_tokens_in_content=allow_special)
    except MintError as err:
        return _refused(err, "chat conversation")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text, "the encoded conversation does not decode to its rendered text"
    if allow_special:
        return True
    harmless = [{**m, "content": "a"} for m in messages]
    structure = tokenizer.encode_chat(harmless, add_generation_prompt=add_generation_prompt)
    control = sum(i in tokenizer.special_token_ids for i in ids)
    expected = sum(i in tokenizer.special_token_ids for i in structure)
    assert control == expected, f"contents added control tokens: {control} in the conversation, {expected} from the template alone"
    return True

