import json

import pytest
from transformers import AutoTokenizer

from mint.errors import Code, MintError
from mint.models.presets import init_base
from mint.models.tokenizer import CHATML_SPECIAL_TOKENS, Tokenizer, write_byte_level_tokenizer

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\nand new\n\nlines  ",
    "Ünïcödé, 中文, emoji 😀👍🏽 and numbers 12345 or 3.14159",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    init_base(path, preset="tiny")
    return path


def test_round_trip_and_specials(base_dir):
    tokenizer = Tokenizer.from_dir(base_dir)
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
    end_of_text, im_start, im_end = (tokenizer.token_to_id(t) for t in CHATML_SPECIAL_TOKENS)
    assert (end_of_text, im_start, im_end) == (0, 1, 2)
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == im_start and ids[-1] == im_end
    assert tokenizer.decode(ids) == "user\nhi"
    assert tokenizer.bos_token_id == im_start
    # tokenizer_config names <|im_end|>; config.json adds <|endoftext|>.
    assert tokenizer.eos_token_ids == (im_end, end_of_text)
    assert tokenizer.vocab_size <= 512


def test_merges_shorten_english(base_dir):
    tokenizer = Tokenizer.from_dir(base_dir)
    text = "The user asked a question, and the assistant answered it with a short reply."
    assert len(tokenizer.encode(text)) < 0.5 * len(text.encode())


def test_builtin_tokenizer_is_deterministic_and_bounded(tmp_path):
    write_byte_level_tokenizer(tmp_path / "a", vocab_size=300)
    write_byte_level_tokenizer(tmp_path / "b", vocab_size=300)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    assert Tokenizer.from_dir(tmp_path / "a").vocab_size == 300
    with pytest.raises(MintError) as err:
        write_byte_level_tokenizer(tmp_path / "c", vocab_size=100)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_chat_template_renders_chatml(base_dir):
    tokenizer = Tokenizer.from_dir(base_dir)
    chat = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(chat) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (
        tokenizer.apply_chat_template(chat, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"
    )


def test_parity_with_transformers(base_dir):
    ours = Tokenizer.from_dir(base_dir)
    theirs = AutoTokenizer.from_pretrained(base_dir)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
    for prompt in (True, False):
        expected = theirs.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt)
        assert ours.apply_chat_template(CONVERSATION, add_generation_prompt=prompt) == expected


def _with_template(base_dir, tmp_path, template):
    config = json.loads((base_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    (tmp_path / "tokenizer.json").write_bytes((base_dir / "tokenizer.json").read_bytes())
    return Tokenizer.from_dir(tmp_path)


def test_template_globals_and_errors(base_dir, tmp_path):
    tokenizer = _with_template(
        base_dir,
        tmp_path,
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must come from the user') }}"
        "{% endif %}{{ bos_token }}{{ messages | tojson }}{{ eos_token }}",
    )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "<b>ü</b>"}])
    # tojson must not HTML-escape or ASCII-escape: the prompt text is exactly what the model sees.
    assert rendered == '<|im_start|>[{"role": "user", "content": "<b>ü</b>"}]<|im_end|>'
    with pytest.raises(MintError) as err:
        tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}])
    assert (
        err.value.code is Code.INVALID_ARGUMENT
        and "first message must come from the user" in err.value.message
    )


def test_template_sandbox_blocks_python_internals(base_dir, tmp_path):
    tokenizer = _with_template(base_dir, tmp_path, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(MintError) as err:
        tokenizer.apply_chat_template(CONVERSATION)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_missing_template_and_missing_tokenizer(base_dir, tmp_path):
    with pytest.raises(MintError) as err:
        _with_template(base_dir, tmp_path, None).apply_chat_template(CONVERSATION)
    assert err.value.code is Code.INVALID_ARGUMENT and "no chat_template" in err.value.message
    with pytest.raises(MintError) as err:
        Tokenizer.from_dir(tmp_path / "empty")
    assert err.value.code is Code.NOT_FOUND
