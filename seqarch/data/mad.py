"""The MAD suite (Poli et al., 2024, "Mechanistic Design and Scaling of Hybrid Architectures",
arXiv 2403.17844) as data tasks of :func:`seqarch.data.build_data`, with MAD's difficulty variants.

Tasks (``data.task``): ``mad_in_context_recall``, ``mad_fuzzy_recall``, ``mad_noisy_recall``,
``mad_selective_copy``, ``mad_compression``, ``mad_memorization``. Each task's defaults are MAD's
baseline setting; :data:`MAD_VARIANTS` lists the changes the benchmark makes to it, one key at a time
(vocabulary size, sequence length, training-set size, noise fraction, tokens to copy). The MAD score of
an architecture is its accuracy averaged over each task's variants, then over tasks.

:func:`mad_solver` answers any MAD example by its rule; the tests check that it scores 100%.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle
from .mad_recall import (
    fuzzy_in_context_recall,
    fuzzy_recall_solver,
    in_context_recall,
    in_context_recall_solver,
    recall_vocab,
)
from .mad_tasks import (
    compression,
    compression_solver,
    memorization,
    memorization_map,
    memorization_solver,
    selective_copying,
    selective_copying_solver,
)
from .options import check_float, check_int, resolve_options, split_seed

# MAD's sets: 12,800 training and 1,280 test examples (memorisation: 256 training examples).
_SIZES = {"num_train": 12800, "num_test": 1280}
_TRAIN_SIZES = [6400, 3200, 1600, 800]
_RECALL_LENGTHS = [256, 512, 1024]

# Baseline (the task's defaults) and the changes of MAD's benchmark, one key at a time.
MAD_VARIANTS: dict[str, dict[str, Any]] = {
    "mad_in_context_recall": {
        "baseline": {"vocab_size": 16, "seq_len": 128, **_SIZES},
        "changes": {"vocab_size": [32, 64, 128], "seq_len": _RECALL_LENGTHS, "num_train": _TRAIN_SIZES},
    },
    "mad_fuzzy_recall": {
        "baseline": {"vocab_size": 16, "seq_len": 128, "k_motif_size": 3, "v_motif_size": 3, **_SIZES},
        "changes": {"vocab_size": [32, 64, 128], "seq_len": _RECALL_LENGTHS, "num_train": _TRAIN_SIZES},
    },
    "mad_noisy_recall": {
        "baseline": {"vocab_size": 32, "noise_vocab_size": 16, "frac_noise": 0.2, "seq_len": 128, **_SIZES},
        # MAD adds the 16 noise ids to in-context recall's vocabularies of 32, 64 and 128.
        "changes": {"vocab_size": [48, 80, 144], "seq_len": _RECALL_LENGTHS, "num_train": _TRAIN_SIZES,
                    "frac_noise": [0.4, 0.6, 0.8]},
    },
    "mad_selective_copy": {
        "baseline": {"vocab_size": 16, "seq_len": 256, "num_tokens": 16, **_SIZES},
        "changes": {"vocab_size": [32, 64, 128], "seq_len": [512, 1024], "num_train": _TRAIN_SIZES,
                    "num_tokens": [32, 64, 96]},
    },
    "mad_compression": {
        "baseline": {"vocab_size": 16, "seq_len": 32, **_SIZES},
        "changes": {"vocab_size": [32, 64, 128], "seq_len": [64, 128, 256], "num_train": _TRAIN_SIZES},
    },
    "mad_memorization": {
        "baseline": {"vocab_size": 256, "seq_len": 32, "num_train": 256, "num_test": 1280},
        "changes": {"vocab_size": [512, 1024, 2048, 4096, 8192]},
    },
}
MAD_TASKS = tuple(MAD_VARIANTS)
# The tasks whose accuracy a model buys with recurrent state (the report plots it against state size).
RECALL_TASKS = ("mad_in_context_recall", "mad_fuzzy_recall", "mad_noisy_recall", "mad_selective_copy")


def mad_variants(task: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, data spec)`` of every MAD variant of ``task``: ``"baseline"`` first, then one per
    changed value, labelled ``key=value`` (each spec is complete: the task and every option)."""
    if task not in MAD_VARIANTS:
        raise ValueError(f"task: expected one of {', '.join(MAD_TASKS)}, got {task!r}")
    baseline = {"task": task, **MAD_VARIANTS[task]["baseline"]}
    variants = [("baseline", baseline)]
    for key, values in MAD_VARIANTS[task]["changes"].items():
        variants += [(f"{key}={value}", {**baseline, key: value}) for value in values]
    return variants


def _options(task: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return resolve_options(task, spec, MAD_VARIANTS[task]["baseline"])


def _bundle(task: str, shape: dict[str, Any], train: tuple, val: tuple, *, kind: str = "lm", **info) -> DataBundle:
    return DataBundle(train=TensorDataset(*train), val=TensorDataset(*val), kind=kind,
                      vocab_size=shape["vocab_size"], seq_len=val[0].shape[1],
                      info={"task": task, **shape, "num_val": len(val[0]), **info}, recall=task in RECALL_TASKS)


def _sizes(options: Mapping[str, Any]) -> tuple[int, int]:
    return check_int(options, "num_train"), check_int(options, "num_test")


def _recall(task: str, spec: Mapping[str, Any], seed: int, *, noisy: bool) -> DataBundle:
    options = _options(task, spec)
    noise_vocab_size = check_int(options, "noise_vocab_size", minimum=1) if noisy else 0
    vocab_size = check_int(options, "vocab_size", minimum=noise_vocab_size + 2)
    seq_len = check_int(options, "seq_len", minimum=4)
    frac_noise = check_float(options, "frac_noise", low=0.0, high=0.99) if noisy else 0.0
    shape = {"vocab_size": vocab_size, "seq_len": seq_len, "noise_vocab_size": noise_vocab_size,
             "frac_noise": frac_noise}
    num_train, num_test = _sizes(options)
    inputs, _, train_targets = in_context_recall(**shape, num_examples=num_train, seed=split_seed(seed, "train"))
    val = in_context_recall(**shape, num_examples=num_test, seed=split_seed(seed, "val"))[:2]
    if not noisy:
        shape = {"vocab_size": vocab_size, "seq_len": seq_len}
    return _bundle(task, shape, (inputs, train_targets), val, num_train=num_train)


def build_in_context_recall(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    return _recall("mad_in_context_recall", spec, seed, noisy=False)


def build_noisy_recall(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    return _recall("mad_noisy_recall", spec, seed, noisy=True)


def build_fuzzy_recall(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    task = "mad_fuzzy_recall"
    options = _options(task, spec)
    k_motif_size = check_int(options, "k_motif_size")
    v_motif_size = check_int(options, "v_motif_size")
    # Motifs are distinct tokens: each vocabulary holds the longest one.
    vocab_size = check_int(options, "vocab_size", minimum=2 * max(k_motif_size, v_motif_size) + 2)
    seq_len = check_int(options, "seq_len", minimum=2 * (k_motif_size + v_motif_size))
    shape = {"vocab_size": vocab_size, "seq_len": seq_len, "k_motif_size": k_motif_size, "v_motif_size": v_motif_size}
    num_train, num_test = _sizes(options)
    inputs, _, train_targets = fuzzy_in_context_recall(**shape, num_examples=num_train,
                                                       seed=split_seed(seed, "train"), is_training=True)
    val = fuzzy_in_context_recall(**shape, num_examples=num_test, seed=split_seed(seed, "val"), is_training=False)
    return _bundle(task, shape, (inputs, train_targets), val[:2], num_train=num_train)


def build_selective_copy(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    task = "mad_selective_copy"
    options = _options(task, spec)
    vocab_size = check_int(options, "vocab_size", minimum=3)
    num_tokens = check_int(options, "num_tokens")
    seq_len = check_int(options, "seq_len", minimum=2 * num_tokens + 1)
    shape = {"vocab_size": vocab_size, "seq_len": seq_len, "num_tokens": num_tokens}
    num_train, num_test = _sizes(options)
    train = selective_copying(**shape, num_examples=num_train, seed=split_seed(seed, "train"))
    val = selective_copying(**shape, num_examples=num_test, seed=split_seed(seed, "val"))
    return _bundle(task, shape, train, val, num_train=num_train)


def build_compression(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    task = "mad_compression"
    options = _options(task, spec)
    shape = {"vocab_size": check_int(options, "vocab_size", minimum=2),
             "seq_len": check_int(options, "seq_len", minimum=2)}
    num_train, num_test = _sizes(options)
    train = compression(**shape, num_examples=num_train, seed=split_seed(seed, "train"))
    val = compression(**shape, num_examples=num_test, seed=split_seed(seed, "val"))
    return _bundle(task, shape, train, val, kind="autoencoder", num_train=num_train)


def build_memorization(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    task = "mad_memorization"
    options = _options(task, spec)
    vocab_size = check_int(options, "vocab_size", minimum=4)
    seq_len = check_int(options, "seq_len", minimum=2)
    if seq_len % 2:
        raise ValueError(f"data.seq_len: expected an even length (pairs of key and insert token), got {seq_len}")
    shape = {"vocab_size": vocab_size, "seq_len": seq_len}
    value_of = memorization_map(vocab_size, split_seed(seed, "map"))
    num_train, num_test = _sizes(options)
    train = memorization(**shape, num_examples=num_train, seed=split_seed(seed, "train"), value_of=value_of)
    val = memorization(**shape, num_examples=num_test, seed=split_seed(seed, "val"), value_of=value_of)
    return _bundle(task, shape, train, val, num_train=num_train)


MAD_SOURCES = {
    "mad_in_context_recall": build_in_context_recall,
    "mad_fuzzy_recall": build_fuzzy_recall,
    "mad_noisy_recall": build_noisy_recall,
    "mad_selective_copy": build_selective_copy,
    "mad_compression": build_compression,
    "mad_memorization": build_memorization,
}


def mad_solver(spec: Mapping[str, Any], inputs: torch.Tensor, *, seed: int) -> torch.Tensor:
    """The rule of the MAD task ``spec`` (a data spec, as :func:`mad_variants` gives) applied to
    validation ``inputs: (batch, length)``: ``(batch, length)`` predictions, -100 where nothing is asked.
    ``seed`` is the run's (memorisation's map is drawn from it)."""
    task = spec.get("task")
    if task not in MAD_SOURCES:
        raise ValueError(f"spec.task: expected one of {', '.join(MAD_TASKS)}, got {task!r}")
    options = _options(task, spec)
    if task in ("mad_in_context_recall", "mad_noisy_recall"):
        num_keys, _ = recall_vocab(options["vocab_size"], options.get("noise_vocab_size", 0))
        return in_context_recall_solver(inputs, num_keys=num_keys)
    if task == "mad_fuzzy_recall":
        return fuzzy_recall_solver(inputs, vocab_size=options["vocab_size"], k_motif_size=options["k_motif_size"])
    if task == "mad_selective_copy":
        return selective_copying_solver(inputs, vocab_size=options["vocab_size"], num_tokens=options["num_tokens"])
    if task == "mad_compression":
        return compression_solver(inputs)
    return memorization_solver(inputs, value_of=memorization_map(options["vocab_size"], split_seed(seed, "map")))
