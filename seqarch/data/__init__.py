"""Data for training and comparing sequence models: synthetic tasks (MQAR, selective copying,
induction heads, ListOps, the MAD suite) and tokenised text corpora, all behind :func:`build_data`.

>>> from seqarch.data import build_data
>>> bundle = build_data({"task": "mqar"}, seed=0)
>>> inputs, targets = bundle.train[0]
"""

from ..losses import IGNORE_INDEX
from .bundle import ACCURACY, LOSS, DataBundle, Metric
from .listops import evaluate_tree, listops
from .mad import MAD_TASKS, mad_solver, mad_variants
from .mqar import lookup_solver, multiquery_ar
from .packing import PackedBlocks, TokenStream, default_cache_dir, tokenized_stream
from .registry import DATA_SOURCES, build_data
from .stdlib_corpus import stdlib_files
from .synthetic import (
    induction_heads,
    induction_solver,
    selective_copy,
    selective_copy_solver,
)
from .text import TextCorpus, load_texts
from .tokenizers import ByteTokenizer, HFTokenizer, build_tokenizer

__all__ = [
    "ACCURACY",
    "DATA_SOURCES",
    "IGNORE_INDEX",
    "LOSS",
    "MAD_TASKS",
    "ByteTokenizer",
    "DataBundle",
    "HFTokenizer",
    "Metric",
    "PackedBlocks",
    "TextCorpus",
    "TokenStream",
    "build_data",
    "build_tokenizer",
    "default_cache_dir",
    "evaluate_tree",
    "induction_heads",
    "induction_solver",
    "listops",
    "load_texts",
    "lookup_solver",
    "mad_solver",
    "mad_variants",
    "multiquery_ar",
    "selective_copy",
    "selective_copy_solver",
    "stdlib_files",
    "tokenized_stream",
]
