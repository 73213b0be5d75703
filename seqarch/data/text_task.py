"""The ``text`` task: packed next-token prediction over a tokenised corpus (cached, see
:mod:`seqarch.data.packing`). Defaults to the Python standard library's sources, byte-level."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .bundle import LOSS, DataBundle
from .options import (
    check_float,
    check_int,
    check_optional_int,
    check_str,
    resolve_options,
)
from .packing import PackedBlocks, default_cache_dir, tokenized_stream
from .text import file_corpus, hub_corpus, list_local_files, stdlib_corpus
from .tokenizers import build_tokenizer

TEXT_SOURCES = ("stdlib", "files", "hub")

TEXT_DEFAULTS: dict[str, Any] = {
    "source": None,  # "stdlib", "files" (needs path) or "hub" (needs dataset); inferred when left out
    "path": None,
    "dataset": None,
    "dataset_config": None,
    "split": "train",  # hub split names
    "val_split": "validation",
    "text_field": "text",
    "tokenizer": "bytes",
    "eod_token": None,
    "seq_len": 256,
    "val_fraction": 0.05,  # local and stdlib sources: share of documents held out, by hash
    "max_files": None,
    "max_bytes": None,
}


def _resolve_source(options: Mapping[str, Any]) -> str:
    source = options["source"]
    if source is None:
        source = "files" if options["path"] is not None else "hub" if options["dataset"] is not None else "stdlib"
    if source not in TEXT_SOURCES:
        raise ValueError(f"data.source: expected one of {', '.join(TEXT_SOURCES)}, got {source!r}")
    needs = {"files": "path", "hub": "dataset"}.get(source)
    for key in ("path", "dataset"):
        if key == needs and options[key] is None:
            raise ValueError(f"data.{key}: expected a value for source {source!r}, got None")
        if key != needs and options[key] is not None:
            raise ValueError(f"data.{key}: expected null for source {source!r}, got {options[key]!r}")
    if source == "hub" and options["max_files"] is not None:
        raise ValueError(
            f"data.max_files: expected null for source 'hub' (use max_bytes), got {options['max_files']!r}"
        )
    return source


def build_text(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    """Every option is checked and the tokenizer loaded before the cache is touched. ``seed`` is unused:
    the split is by document hash, so it is the same for every seed (blocks are shuffled by the loader)."""
    options = resolve_options("text", spec, TEXT_DEFAULTS)
    source = _resolve_source(options)
    seq_len = check_int(options, "seq_len")
    val_fraction = check_float(options, "val_fraction", low=0.0, high=0.5, open_low=True)
    max_files = check_optional_int(options, "max_files")
    max_bytes = check_optional_int(options, "max_bytes")
    text_field = check_str(options, "text_field")
    tokenizer = build_tokenizer(check_str(options, "tokenizer"), eod_token=options["eod_token"])
    limits = {"val_fraction": val_fraction, "max_files": max_files, "max_bytes": max_bytes}

    if source == "stdlib":
        corpora = [stdlib_corpus(split, **limits) for split in ("train", "validation")]
    elif source == "files":
        root, files = list_local_files(options["path"])
        corpora = [file_corpus(root, files, name=str(options["path"]), split=split, text_field=text_field, **limits)
                   for split in ("train", "validation")]
    else:
        dataset = check_str(options, "dataset")
        corpora = [hub_corpus(dataset, split=check_str(options, key), config=options["dataset_config"],
                              text_field=text_field, max_bytes=max_bytes) for key in ("split", "val_split")]

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    streams = [tokenized_stream(corpus, tokenizer, cache) for corpus in corpora]
    datasets = [PackedBlocks(stream, seq_len) for stream in streams]
    for corpus, dataset in zip(corpora, datasets):
        if len(dataset) == 0:
            raise ValueError(
                f"data.seq_len: expected the {corpus.split} split of {corpus.description} to hold at least one block "
                f"of seq_len + 1 = {seq_len + 1} tokens, got {dataset.stream.num_tokens} tokens "
                f"(give more text, a larger val_fraction or max_bytes, or a shorter seq_len)"
            )
    train, val = datasets
    info = {
        "task": "text", "source": corpora[0].description, "tokenizer": repr(tokenizer), "seq_len": seq_len,
        "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id,
        "num_train": len(train), "num_val": len(val),
        "train_tokens": train.stream.num_tokens, "val_tokens": val.stream.num_tokens,
        "train_documents": train.stream.num_documents, "val_documents": val.stream.num_documents,
        "train_files": len(corpora[0].files), "val_files": len(corpora[1].files),
        "cache": [str(stream.path) for stream in streams],
    }
    # Next-token accuracy says little about a language model; it is judged by validation loss.
    return DataBundle(train=train, val=val, kind="lm", vocab_size=tokenizer.vocab_size, seq_len=seq_len, info=info,
                      metric=LOSS)
