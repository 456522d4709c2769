"""Convert a sentence-transformers BERT (safetensors, tokenizer.json) into a GGUF that llama.cpp
serves as an embedding model (architecture `bert`, pooling declared).

This follows llama.cpp's `convert_hf_to_gguf.py` (class BertModel, and the TextModel and
ModelBase steps it inherits) for what llama.cpp reads: tensor names (gguf-py's own tensor
map), F16 matrices with F32 norms, biases and position/token-type tables, the hyper-parameters,
the phantom-space WordPiece vocabulary and the special tokens (gguf-py's own SpecialVocab).
It needs neither torch nor transformers: the vocabulary comes from tokenizer.json itself, and
the one value the upstream converter computes with a tokenizer (the pre-tokenizer name, from a
hash of a test string's tokens) is a constant here, checked by the tests.

The output is deterministic: the same inputs and gguf-py version give the same bytes, so the
caller can pin its sha256.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

# convert_hf_to_gguf hashes the tokens of a fixed text to name the pre-tokenizer; the
# uncased BERT WordPiece vocabulary (bert-base-uncased, bge-small-en, all-MiniLM) hashes to
# 0876d13b…, which its table maps to "jina-v2-en" (the last of two entries with that hash).
# llama.cpp's WordPiece tokenizer does its own pre-tokenisation; the name is recorded as the
# upstream converter would. tests/unit/test_bert_gguf.py recomputes the hash.
PRE_TOKENIZER = "jina-v2-en"

MAX_JSON_BYTES = 4 * 1024 * 1024  # tokenizer.json is ~0.5 MB; nothing legitimate is bigger


class ConversionError(ValueError):
    """The source folder is not a BERT sentence-transformers model this converter handles."""


@dataclass(frozen=True)
class BertParams:
    """The hyper-parameters llama.cpp reads, from config.json and the pooling module."""

    layers: int
    hidden: int
    feed_forward: int
    heads: int
    context: int
    layer_norm_eps: float
    type_vocab: int
    vocab_size: int
    pooling: gguf.PoolingType


def convert(source: Path, out: Path, name: str) -> None:
    """Write the GGUF for the model in folder `source` to `out` (overwritten).

    `source` holds config.json, tokenizer.json, model.safetensors and, for the pooling,
    modules.json with its Pooling folder. Blocking (reads ~90 MB, writes ~45 MB). Raises
    ConversionError naming what is wrong; OSError as the file system reports it."""
    params = read_params(_json(source / "config.json"), source)
    tokens, types = vocabulary(_json(source / "tokenizer.json"), params.vocab_size)
    tensors = load_file(source / "model.safetensors")
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        _write_parameters(writer, params, name)
        writer.add_token_type_count(params.type_vocab)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre(PRE_TOKENIZER)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        # Without "cls": GGUF has no key for it (upstream's writer skips it with a warning);
        # [CLS] is written as the BOS token.
        special = gguf.SpecialVocab(source, n_vocab=len(tokens), special_token_types=(
            "bos", "eos", "unk", "sep", "pad", "mask"))
        if not special.special_token_ids:
            raise ConversionError("the tokenizer names no special tokens ([CLS], [SEP], …)")
        special.add_to_gguf(writer, quiet=True)
        for gguf_name, data in weights(tensors, params.layers):
            writer.add_tensor(gguf_name, data)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def read_params(config: Mapping[str, Any], source: Path) -> BertParams:
    """Pure but for reading the pooling module's config from `source`."""
    if config.get("model_type") != "bert":
        raise ConversionError(f"config.json: model_type is {config.get('model_type')!r}, "
                              "not 'bert'")
    try:
        return BertParams(
            layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]),
            feed_forward=int(config["intermediate_size"]),
            heads=int(config["num_attention_heads"]),
            context=int(config["max_position_embeddings"]),
            layer_norm_eps=float(config["layer_norm_eps"]),
            type_vocab=int(config.get("type_vocab_size", 1)),
            vocab_size=int(config["vocab_size"]), pooling=pooling_type(source))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"config.json: missing or bad value ({exc})") from exc


def pooling_type(source: Path) -> gguf.PoolingType:
    """The pooling the sentence-transformers modules declare (convert_hf_to_gguf's
    `_try_set_pooling_type`). An embedding model without one would make llama.cpp return
    per-token vectors, so its absence is an error here rather than a silent default."""
    modules = _json(source / "modules.json")
    folder = next((m.get("path") for m in modules if isinstance(m, dict)
                   and m.get("type") == "sentence_transformers.models.Pooling"), None)
    if not isinstance(folder, str) or ".." in Path(folder).parts:
        raise ConversionError("modules.json names no Pooling module")
    pooling = _json(source / folder / "config.json")
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    raise ConversionError(f"unsupported pooling in {folder}/config.json")


def vocabulary(tokenizer: Mapping[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Pure: the GGUF token list and token types of a WordPiece tokenizer.json.

    As convert_hf_to_gguf's get_vocab_base then BertModel.set_vocab: added special tokens
    are CONTROL, other added tokens USER_DEFINED, the rest NORMAL, holes UNUSED `[PADi]`;
    then "phantom space" form: a word-initial piece gets "▁" in front and a continuation
    piece loses its "##", which is how llama.cpp's WordPiece tokenizer looks them up."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ConversionError("tokenizer.json: not a WordPiece tokenizer")
    by_id: dict[int, str] = {i: t for t, i in model["vocab"].items() if isinstance(i, int)}
    added: dict[int, bool] = {}
    for entry in tokenizer.get("added_tokens") or []:
        by_id[int(entry["id"])] = str(entry["content"])
        added[int(entry["id"])] = bool(entry.get("special"))
    if not by_id or max(by_id) >= vocab_size:
        raise ConversionError(f"tokenizer.json: token ids do not fit a vocabulary of "
                              f"{vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if i in added:
            kind = gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED
        else:
            kind = gguf.TokenType.NORMAL
        tokens.append(_phantom(token, kind))
        types.append(kind)
    return tokens, [int(t) for t in types]


def _phantom(token: str, kind: gguf.TokenType) -> str:
    if kind == gguf.TokenType.CONTROL:
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def weights(tensors: Mapping[str, np.ndarray], layers: int
            ) -> list[tuple[str, np.ndarray]]:
    """Pure: (GGUF name, data) for each tensor llama.cpp's bert graph uses, sorted by name.

    Dropped as upstream: position_ids, the pooler and any masked-LM head; a `bert.` prefix
    and TensorFlow's gamma/beta names are read as upstream does. Types as upstream
    for --outtype f16: F32 for 1-D tensors (biases, norms) and the position and token-type
    tables, F16 for the other matrices."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    f32_tables = {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD] + ".weight",
                  gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES] + ".weight"}
    out = []
    for name in sorted(tensors):
        short = name.removeprefix("bert.")
        # Old checkpoints name the norms' parameters as TensorFlow did.
        if short.endswith(".gamma"):
            short = short.removesuffix(".gamma") + ".weight"
        elif short.endswith(".beta"):
            short = short.removesuffix(".beta") + ".bias"
        if (short in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
                or short.startswith(("cls.predictions", "cls.seq_relationship"))):
            continue
        gguf_name = names.get_name(short, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConversionError(f"model.safetensors: unexpected tensor {name!r}")
        data = np.asarray(tensors[name], dtype=np.float32)
        if not np.isfinite(data).all():
            raise ConversionError(f"model.safetensors: {name} holds NaN or infinite values")
        keep_f32 = (data.ndim <= 1 or gguf_name.endswith("_norm.weight")
                    or gguf_name in f32_tables or not gguf_name.endswith(".weight"))
        out.append((gguf_name, data if keep_f32 else data.astype(np.float16)))
    return out


def _write_parameters(writer: gguf.GGUFWriter, p: BertParams, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(p.context)
    writer.add_embedding_length(p.hidden)
    writer.add_feed_forward_length(p.feed_forward)
    writer.add_block_count(p.layers)
    writer.add_head_count(p.heads)
    writer.add_layer_norm_eps(p.layer_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    writer.add_pooling_type(p.pooling)


def _json(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConversionError(f"{path.name} is missing") from exc
    if len(raw) > MAX_JSON_BYTES:
        raise ConversionError(f"{path.name} is over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ConversionError(f"{path.name} is not JSON ({exc})") from exc
