"""engine/bert_gguf.py: the GGUF it writes from the real all-MiniLM-L6-v2 files says what
llama.cpp's own converter (convert_hf_to_gguf.py, BertModel) would say: architecture,
hyper-parameters, pooling, vocabulary, special tokens, tensor names and types."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from tokenizers import Tokenizer

from covey.engine import bert_gguf, catalog, embedded
from covey.engine.catalog import sha256_file


@pytest.fixture(scope="module")
def reader(embed_model_path: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(embed_model_path)


def _value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} is missing"
    return field.contents()


def test_hyper_parameters_and_pooling(reader: gguf.GGUFReader) -> None:
    expected = {
        "general.architecture": "bert",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "bert.block_count": 6,
        "bert.context_length": 512,
        "bert.embedding_length": 384,
        "bert.feed_forward_length": 1536,
        "bert.attention.head_count": 12,
        "bert.attention.causal": False,
        "bert.pooling_type": int(gguf.PoolingType.MEAN),
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.pre": "jina-v2-en",
        "tokenizer.ggml.token_type_count": 2,
        # [CLS] opens and [SEP] closes every input, as sentence-transformers does.
        "tokenizer.ggml.bos_token_id": 101,
        "tokenizer.ggml.eos_token_id": 102,
        "tokenizer.ggml.seperator_token_id": 102,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.mask_token_id": 103,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": True,
    }
    assert {key: _value(reader, key) for key in expected} == expected
    assert _value(reader, "bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)


def test_vocabulary_in_phantom_space_form(reader: gguf.GGUFReader,
                                          embed_source_path: Path) -> None:
    tokens = _value(reader, "tokenizer.ggml.tokens")
    types = _value(reader, "tokenizer.ggml.token_type")
    source = json.loads((embed_source_path / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tokens) == len(types) == len(source) == 30522
    control = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
    for i, token in control.items():
        assert (tokens[i], types[i]) == (token, gguf.TokenType.CONTROL)
    for text, i in source.items():
        if i in control:
            continue
        want = text[2:] if text.startswith("##") else "\u2581" + text
        assert (tokens[i], types[i]) == (want, gguf.TokenType.NORMAL), text
    assert tokens[source["hello"]] == "\u2581hello" and tokens[source["##ing"]] == "ing"


def test_tensor_names_and_types(reader: gguf.GGUFReader) -> None:
    found = {t.name: (t.tensor_type, tuple(int(n) for n in t.shape)) for t in reader.tensors}
    f16, f32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    expected = {
        "token_embd.weight": (f16, (384, 30522)),  # GGUF shapes are innermost first
        "position_embd.weight": (f32, (384, 512)),
        "token_types.weight": (f32, (384, 2)),
        "token_embd_norm.weight": (f32, (384,)), "token_embd_norm.bias": (f32, (384,)),
    }
    for i in range(6):
        for name, shape in (("attn_q", (384, 384)), ("attn_k", (384, 384)),
                            ("attn_v", (384, 384)), ("attn_output", (384, 384)),
                            ("ffn_up", (384, 1536)), ("ffn_down", (1536, 384))):
            expected[f"blk.{i}.{name}.weight"] = (f16, shape)
            expected[f"blk.{i}.{name}.bias"] = (f32, (shape[1],))
        for norm in ("attn_output_norm", "layer_output_norm"):
            expected[f"blk.{i}.{norm}.weight"] = (f32, (384,))
            expected[f"blk.{i}.{norm}.bias"] = (f32, (384,))
    assert found == expected


def test_the_catalog_sees_an_embedding_model(embed_model_path: Path) -> None:
    card = catalog.read_card(embed_model_path)
    assert (card.id, card.architecture, card.quantization, card.context_length) == (
        embedded.MINILM.model_id, "bert", "F16", 512)
    assert card.declares_pooling and card.embeddings_only


def test_the_conversion_is_deterministic(embed_source_path: Path, tmp_path: Path) -> None:
    """What makes pinning the GGUF's sha256 possible: a second conversion of the same inputs
    (here in another folder, another process state) gives the same bytes."""
    out = tmp_path / "again.gguf"
    bert_gguf.convert(embed_source_path, out, embedded.MINILM.title)
    assert sha256_file(out) == embedded.MINILM.sha256
    assert out.stat().st_size == embedded.MINILM.size_bytes


# convert_hf_to_gguf's get_vocab_base_pre: the sha256 of this text's token ids names the
# pre-tokenizer; 0876d13b… is "bert-bge" then "jina-v2-en" (the later entry wins).
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple '
          'emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 '
          '3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на '
          'Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')


def test_the_pre_tokenizer_name_is_the_upstream_one(embed_source_path: Path) -> None:
    tokenizer = Tokenizer.from_file(str(embed_source_path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = tokenizer.encode(CHKTXT).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    assert digest == "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"
    assert bert_gguf.PRE_TOKENIZER == "jina-v2-en"


# --- the pure parts, on small inputs ------------------------------------------------------


def test_vocabulary_types_and_holes() -> None:
    tokenizer = {"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "the": 1, "##s": 2,
                                                          "<x>": 4}},
                 "added_tokens": [{"id": 0, "content": "[PAD]", "special": True},
                                  {"id": 4, "content": "<x>", "special": False}]}
    tokens, types = bert_gguf.vocabulary(tokenizer, 6)
    assert tokens == ["[PAD]", "\u2581the", "s", "[PAD3]", "\u2581<x>", "[PAD5]"]
    assert types == [gguf.TokenType.CONTROL, gguf.TokenType.NORMAL, gguf.TokenType.NORMAL,
                     gguf.TokenType.UNUSED, gguf.TokenType.USER_DEFINED,
                     gguf.TokenType.UNUSED]


@pytest.mark.parametrize(("tokenizer", "message"), [
    ({"model": {"type": "BPE", "vocab": {}}}, "not a WordPiece tokenizer"),
    ({"model": {"type": "WordPiece", "vocab": {"a": 9}}}, "do not fit"),
])
def test_vocabulary_refuses(tokenizer: dict[str, Any], message: str) -> None:
    with pytest.raises(bert_gguf.ConversionError, match=message):
        bert_gguf.vocabulary(tokenizer, 4)


def test_weights_drop_what_llama_cpp_does_not_use() -> None:
    tensors = {"embeddings.position_ids": np.zeros((1, 4), np.int64),
               "pooler.dense.weight": np.zeros((2, 2), np.float32),
               "bert.embeddings.word_embeddings.weight": np.ones((4, 2), np.float32),
               "embeddings.LayerNorm.gamma": np.ones(2, np.float32)}
    out = dict(bert_gguf.weights(tensors, 1))
    assert set(out) == {"token_embd.weight", "token_embd_norm.weight"}
    assert out["token_embd.weight"].dtype == np.float16
    assert out["token_embd_norm.weight"].dtype == np.float32


@pytest.mark.parametrize(("tensors", "message"), [
    ({"encoder.layer.0.surprise.weight": np.zeros((2, 2), np.float32)}, "unexpected tensor"),
    ({"embeddings.word_embeddings.weight": np.full((2, 2), np.nan, np.float32)}, "NaN"),
])
def test_weights_refuse(tensors: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(bert_gguf.ConversionError, match=message):
        bert_gguf.weights(tensors, 1)
