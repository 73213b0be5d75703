"""Tokenizers for the text task: bytes by default, or any local Hugging Face ``tokenizer.json``.

Both give ``encode(text) -> list[int]`` (no end-of-document token added), ``encode_batch``,
``decode(ids) -> str``, ``vocab_size`` (the embedding size, end-of-document id included), ``eod_id``
and ``identity`` (a string that changes whenever the ids would: part of the cache key).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Names under which tokenizers commonly carry an end-of-document token, most specific first.
EOD_TOKEN_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<eod>", "[SEP]")


class ByteTokenizer:
    """UTF-8 bytes: ids 0-255 are the bytes, 256 is the end-of-document token; vocab 257.
    ``decode(encode(s)) == s`` for every string (lone surrogates aside, which UTF-8 cannot hold)."""

    eod_id = 256
    vocab_size = 257
    identity = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One uint8 array per text (arrays, not lists: packing megabytes of bytes stays fast)."""
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """End-of-document ids are dropped; a cut multi-byte character decodes to U+FFFD."""
        return bytes(int(i) for i in ids if int(i) != self.eod_id).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` (or a directory holding one).

    The end-of-document id is ``eod_token`` when given, else the first of ``EOD_TOKEN_NAMES`` the
    vocabulary has, else one new id after the vocabulary (``vocab_size`` then grows by one).
    """

    def __init__(self, path: str | os.PathLike, *, eod_token: str | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = resolve_tokenizer_file(path)
        self._tokenizer = Tokenizer.from_file(str(self.path))
        base_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if eod_token is not None:
            eod_id = self._tokenizer.token_to_id(eod_token)
            if eod_id is None:
                raise ValueError(f"data.eod_token: expected a token of {self.path}, got {eod_token!r}")
        else:
            found = [self._tokenizer.token_to_id(name) for name in EOD_TOKEN_NAMES]
            eod_id = next((i for i in found if i is not None), base_size)
        self.eod_id = eod_id
        self.vocab_size = max(base_size, eod_id + 1)
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        self.identity = f"hf:{digest}:eod={eod_id}"

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids if int(i) != self.eod_id])

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


def resolve_tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself when a file, ``path/tokenizer.json`` when a directory."""
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        candidate = candidate / "tokenizer.json"
    if not candidate.is_file():
        raise ValueError(
            f"data.tokenizer: expected 'bytes' or a tokenizer.json (or a directory with one), got {str(path)!r}"
        )
    return candidate


def build_tokenizer(name: str, *, eod_token: str | None = None) -> ByteTokenizer | HFTokenizer:
    """``"bytes"`` (the default) or a local path to a Hugging Face tokenizer."""
    if name == "bytes":
        if eod_token is not None:
            raise ValueError(f"data.eod_token: expected null with tokenizer 'bytes' (its id is 256), got {eod_token!r}")
        return ByteTokenizer()
    return HFTokenizer(name, eod_token=eod_token)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (uint16 up to 65,536 ids)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
