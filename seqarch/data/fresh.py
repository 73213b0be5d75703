"""Training examples drawn fresh for every step: a synthetic task's endless stream, never repeated.

A finite training set read for many epochs lets a model memorise it: on MQAR a gated convolution then
scores near 1.0 on the examples it trained on and far less on new ones, and a comparison measures
memorisation instead of recall. :class:`FreshExamples` instead gives example ``i`` of an endless
stream, generated in chunks of :data:`CHUNK_EXAMPLES` from ``(seed, i // CHUNK_EXAMPLES)`` alone, so
the batch of step ``s`` (examples ``s * batch .. (s + 1) * batch - 1``) is the same in every process
and after every resume, and no example comes twice (up to the task's own collisions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from .options import split_seed

# Examples generated at once (vectorised); part of what fixes the stream, so never change it silently.
CHUNK_EXAMPLES = 512


class FreshExamples(Dataset):
    """Example ``i`` (any ``i >= 0``) of the endless stream of ``generate(**shape, num_examples, seed)``.

    Args:
        generate: a task's generator (``multiquery_ar``, ``selective_copy``, ...) returning
            ``(inputs, targets)``, both ``(num_examples, seq_len)``.
        shape: the generator's task options (vocabulary, length, ...).
        seed: the run's seed; chunk ``c`` is generated from ``split_seed(seed, "train:c")``, a stream
            disjoint from the validation and test splits.

    It has no length (``len()`` raises): a sampler asks for positions ``0, 1, 2, ...``.
    """

    def __init__(self, generate: Callable[..., tuple[torch.Tensor, torch.Tensor]], shape: dict[str, Any],
                 seed: int) -> None:
        self.generate, self.shape, self.seed = generate, dict(shape), seed
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reseeded(self, seed: int) -> FreshExamples:
        """The same task's stream for another run seed."""
        return FreshExamples(self.generate, self.shape, seed)

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``index * CHUNK_EXAMPLES .. (index + 1) * CHUNK_EXAMPLES - 1``."""
        if index not in self._cache:
            if len(self._cache) >= 2:  # a batch spans at most two chunks at a time
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = self.generate(**self.shape, num_examples=CHUNK_EXAMPLES,
                                               seed=split_seed(self.seed, f"train:{index}"))
        return self._cache[index]

    def examples(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of examples ``start .. start + count - 1``, each ``(count, seq_len)``."""
        items = [self[i] for i in range(start, start + count)]
        return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"index: expected a position >= 0 in the fresh stream, got {index}")
        inputs, targets = self.chunk(index // CHUNK_EXAMPLES)
        return inputs[index % CHUNK_EXAMPLES], targets[index % CHUNK_EXAMPLES]

    def __len__(self) -> int:
        raise TypeError("a fresh-example stream has no length: it is endless (data.num_train: null); "
                        "index it by position, or set data.num_train for a finite training set")


SPLIT_SIZE_DOC = """Training examples: ``num_train: null`` (the default) draws fresh examples every step
(:class:`FreshExamples`); an integer is a finite set of that many, read in epochs (a model can then
memorise it; the report flags a train-validation gap). ``num_test``: examples in the held-out test split
(the result reported); ``num_val``: in the validation split (learning rates are chosen on it, training
stops early on it), ``null`` (the default): as many as ``num_test``. ``test_lengths`` (a list, default
none): sequence lengths other than ``seq_len`` at which a model trained at ``seq_len`` is also tested, each
its own held-out split of ``num_test`` examples (length generalisation: the Mamba paper trains induction
heads at 256 and tests up to 1M)."""

SPLIT_DEFAULTS: dict[str, Any] = {"num_train": None, "num_val": None, "num_test": 1000, "test_lengths": None}


def check_test_lengths(options: dict[str, Any], check_length: Callable[[str, Any], int]) -> list[int]:
    """``options["test_lengths"]`` as a sorted list of distinct lengths (``[]`` for none; reports and plots
    read them in this order), each judged by the task's own sequence-length rule
    ``check_length(argument, value)`` (the one ``data.seq_len`` is judged by)."""
    lengths = options.get("test_lengths")
    if lengths is None:
        return []
    if not isinstance(lengths, (list, tuple)):
        raise ValueError(f"data.test_lengths: expected a list of sequence lengths, got {lengths!r}")
    checked = [check_length(f"data.test_lengths[{i}]", length) for i, length in enumerate(lengths)]
    if options["seq_len"] in checked:
        raise ValueError(f"data.test_lengths[{checked.index(options['seq_len'])}]: expected lengths other than "
                         f"data.seq_len={options['seq_len']} (the test split measures that one), got {checked}")
    repeated = sorted({length for length in checked if checked.count(length) > 1})
    if repeated:
        raise ValueError(f"data.test_lengths: expected distinct lengths, got {repeated[0]} more than once in {checked}")
    return sorted(checked)


def synthetic_bundle(task: str, generate: Callable[..., tuple[torch.Tensor, torch.Tensor]], shape: dict[str, Any],
                     options: dict[str, Any], seed: int, check_length: Callable[[str, Any], int], **info: Any):
    """The :class:`DataBundle` of a synthetic ``lm`` task: the training stream or set, validation and test.

    ``options`` holds the task's resolved ``num_train``, ``num_val``, ``num_test`` and ``test_lengths`` (see
    :data:`SPLIT_SIZE_DOC`); ``check_length(argument, value)`` is the task's rule for a sequence length, which
    each of ``test_lengths`` must pass. The splits come from disjoint seeded streams: the test set at length
    ``L`` from ``split_seed(seed, f"test@{L}")``, with every other option of ``shape`` unchanged.
    """
    from torch.utils.data import TensorDataset

    from .bundle import DataBundle
    from .options import check_int, check_optional_int

    num_train = check_optional_int(options, "num_train")
    num_test = check_int(options, "num_test")
    num_val = check_optional_int(options, "num_val") or num_test
    test_lengths = check_test_lengths(options, check_length)
    if num_train is None:
        train = FreshExamples(generate, shape, seed)
    else:
        train = TensorDataset(*generate(**shape, num_examples=num_train, seed=split_seed(seed, "train")))
    val = generate(**shape, num_examples=num_val, seed=split_seed(seed, "val"))
    test = generate(**shape, num_examples=num_test, seed=split_seed(seed, "test"))
    length_tests = {length: TensorDataset(*generate(**{**shape, "seq_len": length}, num_examples=num_test,
                                                    seed=split_seed(seed, f"test@{length}")))
                    for length in test_lengths}
    return DataBundle(
        train=train, val=TensorDataset(*val), test=TensorDataset(*test), length_tests=length_tests, kind="lm",
        vocab_size=shape["vocab_size"], seq_len=shape["seq_len"],
        info={"task": task, **shape, "train_data": "fresh" if num_train is None else "finite",
              "num_train": num_train if num_train is not None else "fresh every step", "num_val": num_val,
              "num_test": num_test, **({"test_lengths": test_lengths} if test_lengths else {}), **info},
        recall=True,
    )
