"""The name grammar (mint.names) accepts exactly its ASCII forms: no other scripts' digits, no look-alike
letters, no trailing newline, no signs, spaces or leading zeros."""

from __future__ import annotations

import pytest

from mint.errors import Code, MintError
from mint.names import PolicyName, RevisionRef, check_alias, check_base_model_name, check_name, check_sha256

# Every character that str.isdigit / int() / \d would take as a digit, but is not an ASCII one.
NON_ASCII_DIGITS = ["²", "³", "¹", "３", "١", "۳", "३", "৩", "๓", "𝟑", "①", "⁴", "₃"]
LOOK_ALIKES = ["\u0430", "\u0435", "\u043e", "\uff42", "\u212a", "\u0131", "\u017f", "\u00df", "\u01c6", "\ufb01"]  # Cyrillic a e o, fullwidth b, Kelvin, ...
BAD_SELECTORS = (
    [f"{d}" for d in NON_ASCII_DIGITS]
    + [f"1{d}" for d in NON_ASCII_DIGITS]
    + ["3\n", "prod\n", "\n3", " 3", "3 ", "\t3", "+3", "-3", "03", "007", "0", "1_000", "3.0", "0x3", "2147483648", "99999999999", ""]
    + [f"pr{c}d" for c in LOOK_ALIKES]
)


@pytest.mark.parametrize("selector", BAD_SELECTORS)
def test_revision_refs_take_only_ascii_numbers_and_aliases(selector):
    with pytest.raises(MintError) as info:
        RevisionRef.parse(f"acme/bot@{selector}")
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "text, number, alias",
    [("acme/bot@7", 7, None), ("acme/bot@2147483647", 2147483647, None), ("acme/bot@prod", None, "prod"), ("acme/bot", None, "latest")],
)
def test_documented_refs_parse(text, number, alias):
    ref = RevisionRef.parse(text)
    assert (ref.number, ref.alias) == (number, alias)


BAD_NAMES = (
    [f"bot{d}" for d in NON_ASCII_DIGITS]
    + [f"b{c}t" for c in LOOK_ALIKES]
    + ["bot\n", "\nbot", "bot ", " bot", "bot\r", "bot\x00", "-bot", "", "bot\u200b", "a" * 129]
)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_and_aliases_take_only_their_ascii_grammar(name):
    for check in (lambda: check_name("policy", name), lambda: check_alias(name), lambda: PolicyName.parse(f"acme/{name}"),
                  lambda: PolicyName.parse(f"{name}/bot"), lambda: check_base_model_name(name)):
        with pytest.raises(MintError) as info:
            check()
        assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("value", ["a" * 63 + "\n", "a" * 64 + "\n", "A" * 64, "a" * 63 + "３", " " + "a" * 63, "a" * 65, ""])
def test_sha256_is_exactly_64_lowercase_hex(value):
    with pytest.raises(MintError):
        check_sha256(value)
    assert check_sha256("a" * 64) == "a" * 64
