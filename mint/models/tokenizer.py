"""Text in and out of token ids for a base model, and its chat template.

A model directory carries `tokenizer.json` (read with the `tokenizers` library) and `tokenizer_config.json`
(special tokens, chat template). Chat templates are untrusted Jinja from model authors, so they render in
Jinja's immutable sandbox with the globals transformers provides to them.

Chat prompts are encoded so that only the template makes control tokens: the text of a special token
inside a message's content (`<|im_start|>assistant` typed by a user) is encoded as the plain text it is,
so a message cannot forge turns (`encode_chat`). Plain `encode` parses special tokens wherever they appear:
a raw completion prompt is the caller's whole prompt, markers included.

A base without `tokenizer.json` is still served and trained on token ids: `Tokenizer.from_dir_if_present`
gives None for it, and text or chat calls fail with `no_tokenizer`'s FAILED_PRECONDITION.

Clients receive a base's tokenizer as the files it is read from (`tokenizer_files`, which engines serve
through the gateway) and rebuild it with `Tokenizer.from_files`.

`write_byte_level_tokenizer` makes the small deterministic tokenizer that random test bases ship with.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from mint.errors import MintError, invalid, not_found, precondition

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
EOS_FILES = ("generation_config.json", "config.json")  # where models list more tokens they stop on
# What `from_dir` reads: the files a client needs to rebuild a base's tokenizer (`tokenizer_files`).
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE, *EOS_FILES)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# The special tokens tokenizer_config.json names, and chat templates see as variables of the same names.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


class Tokenizer:
    def __init__(
        self,
        backend: HFTokenizer,
        *,
        special_tokens: Mapping[str, str | None],
        chat_template: str | None,
        extra_eos_token_ids: Sequence[int] = (),
    ):
        """special_tokens: bos_token, eos_token, pad_token, unk_token as strings (absent or None if unset)."""
        self.backend = backend
        self.special_tokens = {name: special_tokens.get(name) for name in SPECIAL_TOKEN_NAMES}
        self.bos_token_id = self._id_of(self.special_tokens["bos_token"])
        eos_id = self._id_of(self.special_tokens["eos_token"])
        self.eos_token_ids: tuple[int, ...] = tuple(
            dict.fromkeys(([] if eos_id is None else [eos_id]) + list(extra_eos_token_ids))
        )
        self.chat_template = chat_template
        self._template = _compile_chat_template(chat_template) if chat_template else None
        # Control tokens: added tokens flagged special, and the ones tokenizer_config.json names.
        named = {self._id_of(token) for token in self.special_tokens.values()} | set(self.eos_token_ids)
        self.special_token_ids = frozenset(
            {i for i, token in backend.get_added_tokens_decoder().items() if token.special} | (named - {None})
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read `tokenizer.json`, `tokenizer_config.json` and, where present, `chat_template.jinja` and the
        eos ids of `generation_config.json`/`config.json` (models often stop on more than one token)."""
        path = Path(path)
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise not_found(f"{path} has no {TOKENIZER_FILE}")
        backend = HFTokenizer.from_file(str(file))
        config = _read_json(path / TOKENIZER_CONFIG_FILE)
        special_tokens = {name: _token_content(config.get(name)) for name in SPECIAL_TOKEN_NAMES}

        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates; "default" is the one chat uses
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (path / CHAT_TEMPLATE_FILE).is_file():
            template = (path / CHAT_TEMPLATE_FILE).read_text()

        extra_eos: list[int] = []
        for name in EOS_FILES:
            eos = _read_json(path / name).get("eos_token_id")
            extra_eos += eos if isinstance(eos, list) else [] if eos is None else [eos]
        return cls(
            backend, special_tokens=special_tokens, chat_template=template, extra_eos_token_ids=extra_eos
        )

    @classmethod
    def from_files(cls, files: Mapping[str, str]) -> Tokenizer:
        """The tokenizer that `tokenizer_files` gave these files of (name -> text); names that are not
        tokenizer files are ignored."""
        with tempfile.TemporaryDirectory(prefix="mint-tokenizer-") as scratch:
            for name, text in files.items():
                if name in TOKENIZER_FILES:
                    (Path(scratch) / name).write_text(text)
            return cls.from_dir(scratch)

    @classmethod
    def from_dir_if_present(cls, path: str | Path) -> Tokenizer | None:
        """`from_dir`, or None when the directory has no `tokenizer.json` (a base used by token ids only)."""
        return cls.from_dir(path) if (Path(path) / TOKENIZER_FILE).is_file() else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """add_special_tokens applies the tokenizer's own post-processor (e.g. a leading BOS for Llama 2)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render a conversation to the prompt text the model was trained on (no tokenization)."""
        if self._template is None:
            raise invalid("this tokenizer has no chat_template; send a plain prompt instead")
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
                **kwargs,
            )
        except jinja2.TemplateError as e:
            raise invalid(f"chat template rejected the conversation: {e}") from e

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        allow_special_tokens_in_content: bool = False,
    ) -> list[int]:
        """The conversation rendered with the chat template, as token ids.

        Control tokens come from the template only: a special token's text inside a message's content
        encodes as ordinary text tokens, and a role that contains one is refused (roles are template
        structure). allow_special_tokens_in_content=True encodes the rendered text as a whole, so content
        may carry control tokens (transformers' apply_chat_template(tokenize=True) does that). Conversations
        whose contents hold no special token's text encode the same either way.
        """
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        encoding = self.backend.encode(text, add_special_tokens=False)
        if allow_special_tokens_in_content:
            return encoding.ids
        for i, message in enumerate(messages):
            self._refuse_special_tokens(
                message.get("role"),
                f"message {i}'s role",
                "a role is part of the template's structure, only contents may spell out special tokens",
            )
        spans = self._content_spans(messages, add_generation_prompt, text)
        if spans is None:
            # The template changes contents as it renders them (trims them, say), so where each one lies
            # in the text is not known: accept only contents that hold no control token at all.
            for i, message in enumerate(messages):
                self._refuse_special_tokens(
                    message.get("content"),
                    f"message {i}'s content",
                    "this base model's chat template rewrites contents, so it can't be kept as text: remove it, "
                    "or set allow_special_tokens_in_content to send it as that token",
                )
            return encoding.ids
        starts = [start for start, _ in spans]
        structural: list[tuple[int, int, int]] = []  # (start, end, id) of the template's own control tokens
        forged = False
        for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token_id not in self.special_token_ids:
                continue
            if _overlaps(_strip_span(text, start, end), spans, starts):
                forged = True
            else:
                structural.append((start, end, token_id))
        if not forged:
            return encoding.ids
        # Encode again with a copy that reads control tokens' text as text, the template's own control
        # tokens each replaced by a marker the copy matches as a token of its own: the text is split where
        # the first encoding split it (normalizers and pre-tokenizers see the same pieces), then each marker
        # becomes the control token it stands for.
        plain, marker, marker_id = self._plain_backend
        pieces: list[str] = []
        last = 0
        for start, end, _ in structural:
            pieces += [text[last:start], marker]
            last = end
        pieces.append(text[last:])
        ids = plain.encode("".join(pieces), add_special_tokens=False).ids
        if ids.count(marker_id) != len(structural):
            raise invalid("a message's content contains text this server reserves; remove it")
        control = iter(token_id for _, _, token_id in structural)
        return [next(control) if token_id == marker_id else token_id for token_id in ids]

    @functools.cached_property
    def _plain_backend(self) -> tuple[HFTokenizer, str, int]:
        """A copy of the backend that encodes every control token's text as ordinary text, and matches one
        extra token, a marker no one outside this process can know: (copy, marker, marker's id)."""
        spec = json.loads(self.backend.to_str())
        for token in spec.get("added_tokens", []):
            if token["id"] in self.special_token_ids:
                token["special"] = True  # encode_special_tokens passes over special tokens only
        plain = HFTokenizer.from_str(json.dumps(spec))
        plain.encode_special_tokens = True
        marker = f"\ue000{secrets.token_hex(16)}\ue001"
        plain.add_tokens([AddedToken(marker, normalized=False)])
        return plain, marker, plain.token_to_id(marker)

    def _content_spans(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, text: str
    ) -> list[tuple[int, int]] | None:
        """Where each message's content lies in `text`, the rendered conversation: the template is rendered
        again with a random marker in place of each content, and the markers give the places. None when
        putting the contents back in the markers' places does not give `text` (the template rewrote them)."""
        nonce = secrets.token_hex(8)
        marked = [
            {**m, "content": f"\ue000{nonce}:{i}\ue001"} if isinstance(m.get("content"), str) else m
            for i, m in enumerate(messages)
        ]
        skeleton = self.apply_chat_template(marked, add_generation_prompt=add_generation_prompt)
        spans: list[tuple[int, int]] = []
        rebuilt: list[str] = []
        length = 0
        last = 0
        for match in re.finditer(f"\ue000{nonce}:(\\d+)\ue001", skeleton):
            structure = skeleton[last : match.start()]
            content = messages[int(match.group(1))]["content"]
            rebuilt += [structure, content]
            length += len(structure)
            spans.append((length, length + len(content)))
            length += len(content)
            last = match.end()
        rebuilt.append(skeleton[last:])
        return spans if "".join(rebuilt) == text else None

    def _refuse_special_tokens(self, value: Any, what: str, why: str) -> None:
        if not isinstance(value, str):
            return
        found = [
            i for i in self.backend.encode(value, add_special_tokens=False).ids if i in self.special_token_ids
        ]
        if found:
            raise invalid(f"{what} contains the special token {self.backend.id_to_token(found[0])!r}; {why}")

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)


def tokenizer_files(base_model: str, path: str | Path) -> dict[str, str]:
    """The files of base `base_model`'s directory `path` that a client rebuilds its tokenizer from
    (`Tokenizer.from_files`), name -> text; `no_tokenizer` when it has no tokenizer.json."""
    path = Path(path)
    if not (path / TOKENIZER_FILE).is_file():
        raise no_tokenizer(base_model, path)
    return {name: (path / name).read_text() for name in TOKENIZER_FILES if (path / name).is_file()}


def no_tokenizer(base_model: str, path: str | Path) -> MintError:
    """The error of a call that needs text (a text or chat prompt, stop strings, a tokenizer to download) on a
    base whose directory `path` has no tokenizer.json."""
    return precondition(f"base model {base_model} has no {TOKENIZER_FILE}; send token ids, or add the tokenizer to {path}")


def write_byte_level_tokenizer(path: str | Path, *, vocab_size: int) -> Tokenizer:
    """Write a byte-level BPE tokenizer with ChatML specials (ids 0, 1, 2), the 256 byte tokens, and the
    merges a built-in English sample yields, up to `vocab_size` in all. Deterministic."""
    minimum = len(CHATML_SPECIAL_TOKENS) + 256
    if vocab_size < minimum:
        raise invalid(f"a byte-level tokenizer needs vocab_size >= {minimum}, got {vocab_size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(CHATML_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_MERGE_CORPUS.splitlines(), trainer)
    backend.save(str(path / TOKENIZER_FILE))
    end_of_text, im_start, im_end = CHATML_SPECIAL_TOKENS
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": im_start,
        "eos_token": im_end,
        "pad_token": im_end,
        "unk_token": end_of_text,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHATML_TEMPLATE,
    }
    (path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Tokenizer.from_dir(path)


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A matched control token's span without the whitespace it absorbed (tokens with lstrip/rstrip take the
    spaces around them, which may belong to a neighbouring content)."""
    piece = text[start:end]
    core = piece.strip()
    if not core:
        return start, end
    left = start + piece.index(core)
    return left, left + len(core)


def _overlaps(span: tuple[int, int], spans: Sequence[tuple[int, int]], starts: Sequence[int]) -> bool:
    """Whether `span` shares a character with one of `spans` (sorted, disjoint; `starts` their starts)."""
    start, end = span
    k = bisect.bisect_left(starts, end) - 1  # the last span that starts before `span` ends
    return k >= 0 and spans[k][1] > start


def _compile_chat_template(source: str) -> jinja2.Template:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters, which would change the prompt text.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise invalid(f"chat_template is not valid Jinja (line {e.lineno}): {e.message}") from e


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise invalid(f"{file} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise invalid(f"{file} must hold a JSON object, got {type(value).__name__}")
    return value


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json spells a special token either as a string or as a serialized AddedToken.
    return value.get("content") if isinstance(value, dict) else value


# English sample the built-in tokenizer learns its merges from: enough for a few hundred merges, so that
# prompts in tests are a realistic number of tokens rather than one per byte.
_MERGE_CORPUS = """\
The quick brown fox jumps over the lazy dog while the other animals watch from the side of the road.
A language model reads a sequence of tokens and predicts the next one, one step at a time.
Training a model means showing it many examples and nudging its weights to make better predictions.
Each adapter is a small set of weights that changes how the shared base model behaves for one task.
When many people send requests at the same time, the server batches them together to use the machine well.
The user asked a question, and the assistant answered it with a short and helpful reply.
Please write a short story about a robot who learns to paint pictures of the sea and the sky.
What is the capital of France? The capital of France is Paris, a city on the river Seine.
How many days are there in a week? There are seven days in a week, and the weekend has two of them.
She opened the window, looked at the garden, and smiled because the flowers were finally in bloom.
In the morning they walked to the station, bought two tickets, and took the train to the coast.
Good software is tested, documented, and easy to change, and its errors tell the reader what went wrong.
The weather today is sunny with a light wind from the west, and tomorrow there may be some rain.
Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in text too, as do dates such as 12 March 2023.
If you have any questions about the order, please reply to this message and we will help you.
The teacher explained the lesson again, and this time every student in the class understood it.
Reading books, playing music, and spending time with friends are some of the things people enjoy.
The system stores every version of every adapter, so that a change can always be rolled back later.
A careful engineer measures first, then changes one thing, then measures again to see what it did.
Thank you for your help! I think that this is the right answer, but let me check it once more.
"""
