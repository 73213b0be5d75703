"""Tokenise a corpus once, cache the token stream on disk, and serve fixed-length blocks from it.

The cache holds one flat stream per (corpus fingerprint, tokenizer): every document's ids followed
by the end-of-document id, as raw ``uint16``/``uint32`` (``<key>.bin``) plus ``<key>.json`` metadata.
The stream does not depend on ``seq_len``, so another block length reuses it. Both files are written
under temporary names and moved into place with ``os.replace`` (the metadata last), so a killed run
leaves either a complete cache or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .text import TextCorpus
from .tokenizers import token_dtype

CACHE_FORMAT = 1
ENCODE_BATCH_DOCUMENTS = 256


def default_cache_dir() -> Path:
    """``$SEQARCH_CACHE``, else ``~/.cache/seqarch``."""
    return Path(os.environ.get("SEQARCH_CACHE") or Path.home() / ".cache" / "seqarch")


@dataclass(frozen=True)
class TokenStream:
    """A cached token stream: ``num_tokens`` ids of ``dtype`` in the raw file ``path``."""

    path: Path
    dtype: str
    num_tokens: int
    num_documents: int

    def array(self) -> np.ndarray:
        """The stream as a read-only memory map, ``(num_tokens,)``."""
        if self.num_tokens == 0:
            return np.empty(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))


def cache_key(corpus: TextCorpus, tokenizer) -> str:
    described = json.dumps({"format": CACHE_FORMAT, "corpus": corpus.fingerprint, "tokenizer": tokenizer.identity},
                           sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def _load_cached(bin_path: Path, meta_path: Path) -> TokenStream | None:
    try:
        meta = json.loads(meta_path.read_text())
        stream = TokenStream(bin_path, meta["dtype"], int(meta["num_tokens"]), int(meta["num_documents"]))
        complete = bin_path.stat().st_size == stream.num_tokens * np.dtype(stream.dtype).itemsize
    except (OSError, ValueError, KeyError):
        return None
    return stream if complete else None


def _encoded_documents(corpus: TextCorpus, tokenizer) -> Iterator[list[int]]:
    batch: list[str] = []
    for text in corpus.documents():
        batch.append(text)
        if len(batch) == ENCODE_BATCH_DOCUMENTS:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)


def _atomic_write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def tokenized_stream(corpus: TextCorpus, tokenizer, cache_dir: str | os.PathLike | None = None) -> TokenStream:
    """The token stream of ``corpus``: loaded from the cache when there, else tokenised and cached."""
    directory = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / "text"
    key = cache_key(corpus, tokenizer)
    bin_path, meta_path = directory / f"{key}.bin", directory / f"{key}.json"
    cached = _load_cached(bin_path, meta_path)
    if cached is not None:
        return cached

    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    num_tokens = num_documents = 0
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f"{key}.bin.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for ids in _encoded_documents(corpus, tokenizer):
                document = np.append(np.asarray(ids, dtype=dtype), np.asarray(tokenizer.eod_id, dtype=dtype))
                document.tofile(handle)
                num_tokens += document.size
                num_documents += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, bin_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    meta = {"dtype": dtype.name, "num_tokens": num_tokens, "num_documents": num_documents,
            "corpus": corpus.fingerprint, "tokenizer": tokenizer.identity, "files": corpus.files}
    _atomic_write_text(meta_path, json.dumps(meta))
    return TokenStream(bin_path, dtype.name, num_tokens, num_documents)


class PackedBlocks(Dataset):
    """Next-token prediction over a token stream cut into non-overlapping blocks of ``seq_len + 1``
    tokens (the remainder dropped). Item ``i``: ``(inputs, targets)``, both ``LongTensor(seq_len)``,
    ``inputs = block[:-1]``, ``targets = block[1:]`` (no -100: every position is scored).

    The memory map opens lazily and is not pickled, so DataLoader workers each map the file
    instead of receiving a copy of the stream."""

    def __init__(self, stream: TokenStream, seq_len: int) -> None:
        self.stream = stream
        self.seq_len = seq_len
        self.num_blocks = stream.num_tokens // (seq_len + 1)
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -self.num_blocks <= index < self.num_blocks:
            raise IndexError(f"index: expected in [0, {self.num_blocks}), got {index}")
        if self._tokens is None:
            self._tokens = self.stream.array()
        start = (index % self.num_blocks) * (self.seq_len + 1)
        block = torch.from_numpy(self._tokens[start:start + self.seq_len + 1].astype(np.int64))
        return block[:-1], block[1:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
