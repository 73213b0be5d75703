"""Text corpora: the documents of one split of a source, and a fingerprint that names them.

Sources: ``"stdlib"`` (the embedded default, see :mod:`seqarch.data.stdlib_corpus`), local files or
directories (``.txt``/``.md``/``.py``: one document per file; ``.jsonl``: one per line, text in
``text_field``; ``.parquet``: one per row), or a Hugging Face hub dataset via ``datasets.load_dataset``
(needs the network or the datasets cache). Local and stdlib sources are split into train and
validation by a hash of each document's key (a file's relative path, or ``path:index`` for a record),
so the split is deterministic, disjoint and stable when files are added.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stdlib_corpus import stdlib_files, stdlib_root

WHOLE_FILE_SUFFIXES = (".txt", ".md", ".py")
RECORD_SUFFIXES = (".jsonl", ".parquet")
SPLITS = ("train", "validation")


@dataclass
class TextCorpus:
    """The documents of one split: ``documents()`` yields their texts; ``fingerprint`` (JSON-able) changes
    whenever they may (files, sizes, mtimes, options) and keys the token cache."""

    description: str
    split: str
    fingerprint: dict[str, Any]
    documents: Callable[[], Iterator[str]]
    files: list[str] = field(default_factory=list)


def split_of(key: str, val_fraction: float) -> str:
    """``"validation"`` for about ``val_fraction`` of all keys, by a hash of ``key`` (no RNG state)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2.0**64
    return "validation" if bucket < val_fraction else "train"


def _hash_order(key: str) -> bytes:
    # A fixed pseudo-random order, so max_files takes a sample of the corpus, not its first letters.
    return hashlib.sha256(b"order:" + key.encode()).digest()


def list_local_files(path: str | os.PathLike) -> tuple[Path, list[Path]]:
    """``(root, files)``: the file itself, or the supported files under a directory, sorted."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"data.path: no such file or directory: {str(path)!r}")
    suffixes = WHOLE_FILE_SUFFIXES + RECORD_SUFFIXES
    if path.is_file():
        if path.suffix not in suffixes:
            raise ValueError(f"data.path: expected a file ending in {', '.join(suffixes)}, got {str(path)!r}")
        return path.parent, [path]
    files = sorted(
        (f for f in path.rglob("*") if f.is_file() and f.suffix in suffixes
         and not any(part.startswith(".") for part in f.relative_to(path).parts)),
        key=lambda f: f.relative_to(path).as_posix(),
    )
    if not files:
        raise ValueError(
            f"data.path: expected a directory holding {', '.join(suffixes)} files, found none in {str(path)!r}"
        )
    return path, files


def read_utf8(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 (a binary file given as text) is refused with the
    offset of its first bad byte, since training on replacement characters would go unnoticed."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"data.path: expected UTF-8 text, got a byte {data[error.start]:#04x} that is not UTF-8 at byte offset "
            f"{error.start} of {str(path)!r} (a binary file?); convert it or leave it out of the corpus"
        ) from None


def _read_records(path: Path, relative: str, text_field: str) -> Iterator[tuple[str, str]]:
    """``(key, text)`` per document of a file."""
    if path.suffix in WHOLE_FILE_SUFFIXES:
        yield relative, read_utf8(path)
    elif path.suffix == ".jsonl":
        for number, line in enumerate(read_utf8(path).splitlines(keepends=True)):
            if line.strip():
                yield f"{relative}:{number}", _field(json.loads(line), text_field, f"{path}:{number + 1}")
    else:
        import pyarrow.parquet as pq

        schema_names = pq.read_schema(path).names
        if text_field not in schema_names:
            raise ValueError(
                f"data.text_field: expected a column of {str(path)!r} ({', '.join(schema_names)}), got {text_field!r}"
            )
        for number, text in enumerate(pq.read_table(path, columns=[text_field]).column(0).to_pylist()):
            yield f"{relative}:{number}", text or ""


def _field(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(
            f"data.text_field: expected a string field {text_field!r} in every record, got none at {where}"
        )
    return record[text_field]


def _limit_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """Documents until ``max_bytes`` UTF-8 bytes are reached (the document crossing it included)."""
    total = 0
    for text in texts:
        if max_bytes is not None and total >= max_bytes:
            return
        total += len(text.encode("utf-8"))
        yield text


def _split_by_position(text: str, split: str, val_fraction: float) -> str:
    """The head (train) or the tail (validation, about ``val_fraction`` of it, from a line start) of ``text``."""
    cut = int(len(text) * (1 - val_fraction))
    line_start = text.find("\n", cut)
    cut = cut if line_start < 0 else line_start + 1
    return text[:cut] if split == "train" else text[cut:]


def file_corpus(
    root: Path, files: list[Path], *, name: str, split: str, text_field: str = "text",
    val_fraction: float = 0.05, max_files: int | None = None, max_bytes: int | None = None,
) -> TextCorpus:
    """One split of local files. Whole-file documents are split by file, records by record; a source that
    is one text file is split by position instead (its last ``val_fraction``, from a line start, is the
    validation split). ``max_files`` and ``max_bytes`` cap the train split, and the validation split gets
    ``val_fraction`` of each (at least one file), so a small CPU run still has a validation set."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    share = 1.0 if split == "train" else val_fraction
    relative = {f: f.relative_to(root).as_posix() for f in files}
    one_text_file = len(files) == 1 and files[0].suffix in WHOLE_FILE_SUFFIXES
    chosen = [
        f for f in files
        if one_text_file or f.suffix in RECORD_SUFFIXES or split_of(relative[f], val_fraction) == split
    ]
    chosen.sort(key=lambda f: _hash_order(relative[f]))
    if max_files is not None:
        chosen = chosen[: max(1, math.ceil(max_files * share))]
    budget = None if max_bytes is None else max(1, math.ceil(max_bytes * share))

    def documents() -> Iterator[str]:
        def texts() -> Iterator[str]:
            for f in chosen:
                for key, text in _read_records(f, relative[f], text_field):
                    if one_text_file:
                        yield _split_by_position(text, split, val_fraction)
                    elif f.suffix in WHOLE_FILE_SUFFIXES or split_of(key, val_fraction) == split:
                        yield text

        return _limit_bytes(texts(), budget)

    stats = [(relative[f], f.stat().st_size, f.stat().st_mtime_ns) for f in chosen]
    fingerprint = {"kind": "one_text_file" if one_text_file else "files", "name": name,
                   "root": str(root.resolve()), "files": stats, "split": split,
                   "text_field": text_field, "val_fraction": val_fraction, "max_bytes": budget}
    return TextCorpus(description=name, split=split, fingerprint=fingerprint, documents=documents,
                      files=[relative[f] for f in chosen])


def stdlib_corpus(split: str, *, val_fraction: float = 0.05, max_files: int | None = None,
                  max_bytes: int | None = None) -> TextCorpus:
    root = stdlib_root()
    return file_corpus(root, stdlib_files(root), name="stdlib", split=split, val_fraction=val_fraction,
                       max_files=max_files, max_bytes=max_bytes)


def hub_corpus(dataset: str, *, split: str, config: str | None = None, text_field: str = "text",
               max_bytes: int | None = None) -> TextCorpus:
    """One split of a Hugging Face hub dataset (``split`` is the hub's split name)."""

    def documents() -> Iterator[str]:
        import datasets

        loaded = datasets.load_dataset(dataset, config, split=split)
        if text_field not in loaded.column_names:
            raise ValueError(
                f"data.text_field: expected a column of {dataset!r} ({', '.join(loaded.column_names)}), "
                f"got {text_field!r}"
            )
        return _limit_bytes((row[text_field] for row in loaded), max_bytes)

    fingerprint = {"kind": "hub", "dataset": dataset, "config": config, "split": split,
                   "text_field": text_field, "max_bytes": max_bytes}
    return TextCorpus(description=f"hub:{dataset}" + (f"/{config}" if config else ""), split=split,
                      fingerprint=fingerprint, documents=documents)


def load_texts(source: str | os.PathLike, *, split: str = "train", text_field: str = "text",
               config: str | None = None, val_fraction: float = 0.05, max_files: int | None = None,
               max_bytes: int | None = None) -> Iterator[str]:
    """The document texts of one split of ``source``: ``"stdlib"``, an existing local file or directory,
    or else a Hugging Face hub dataset name (``split`` is then the hub's split name)."""
    if source == "stdlib":
        return stdlib_corpus(split, val_fraction=val_fraction, max_files=max_files, max_bytes=max_bytes).documents()
    if Path(source).expanduser().exists():
        root, files = list_local_files(source)
        return file_corpus(root, files, name=str(source), split=split, text_field=text_field,
                           val_fraction=val_fraction, max_files=max_files, max_bytes=max_bytes).documents()
    return hub_corpus(str(source), split=split, config=config, text_field=text_field, max_bytes=max_bytes).documents()
