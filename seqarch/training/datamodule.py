"""Data for Lightning: a step-indexed batch order that survives a restart and shards over ranks.

The batch of global step ``s`` is fixed by ``(seed, s)`` alone: a finite training set is
read in a fresh permutation per epoch (seeded by the epoch), and step ``s`` takes
positions ``s*B .. s*B+B-1`` of that endless stream; a fresh-example stream
(:class:`seqarch.data.fresh.FreshExamples`, regenerated for the run's seed) is read in order,
so step ``s`` takes its examples ``s*B .. s*B+B-1``, never seen before. A resumed run asks for the
stream from its restored step, so it sees exactly the batches the uninterrupted
run would have seen. Under data parallelism rank ``r`` of ``W`` takes every
``W``-th example of the global batch, so ``W`` processes see the same global batch
as one process does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import DataBundle
from ..data.fresh import FreshExamples
from .config import TrainSection


class StepBatchSampler(Sampler[list[int]]):
    """Index lists for global steps ``start() .. total_steps - 1`` of one rank.

    Args:
        size: examples in the dataset; ``None``: an endless stream read in order (fresh examples).
        batch_size: the global batch (all ranks together).
        total_steps: the run's length in optimiser steps.
        seed: fixes every epoch's permutation.
        start: called when iteration begins; returns the first step (the restored
            global step after a resume).
        rank, world_size: this process's shard of every global batch.
    """

    def __init__(self, size: int | None, batch_size: int, total_steps: int, *, seed: int,
                 start: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"train.batch_size: expected a multiple of the {world_size} processes, got {batch_size}")
        self.size, self.batch_size, self.total_steps = size, batch_size, total_steps
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_cache = (epoch, torch.randperm(self.size, generator=generator))
        return self._epoch_cache[1]

    def global_batch(self, step: int) -> list[int]:
        """Dataset indices of the whole global batch of ``step``."""
        first = step * self.batch_size
        if self.size is None:
            return list(range(first, first + self.batch_size))
        out = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.size)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start(), self.total_steps):
            yield self.global_batch(step)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return self.total_steps


class SeqarchDataModule(L.LightningDataModule):
    """Wraps a :class:`seqarch.data.DataBundle` for Lightning with :class:`StepBatchSampler` order."""

    def __init__(self, bundle: DataBundle, train: TrainSection) -> None:
        super().__init__()
        self.bundle = bundle
        self.train_options = train

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        workers = self.train_options.num_workers
        return DataLoader(dataset, num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def _train_dataset(self) -> Dataset:
        """The training set; a fresh stream is drawn for this run's seed (each seed its own examples)."""
        train = self.bundle.train
        return train.reseeded(self.train_options.seed) if isinstance(train, FreshExamples) else train

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        dataset = self._train_dataset()
        sampler = StepBatchSampler(
            None if isinstance(dataset, FreshExamples) else len(dataset), self.train_options.batch_size,
            self.train_options.steps, seed=self.train_options.seed, start=lambda: trainer.global_step,
            rank=trainer.global_rank, world_size=trainer.world_size,
        )
        return self._loader(dataset, batch_sampler=sampler)

    def _evaluation_loader(self, dataset: Dataset, limit: int | None, length: int | None = None) -> DataLoader:
        """``dataset``'s first ``limit`` batches (all of it when ``None``), this rank's share, in order.

        ``length``: the sequence length of a test set at another length than the training one; its
        batches hold at most as many tokens as a training batch (at least one sequence), so memory stays
        that of training (a quadratic layer's attention matrix grows with the length all the same)."""
        trainer = self.trainer
        per_rank = max(1, self.train_options.batch_size // trainer.world_size)
        if length is not None:
            per_rank = max(1, per_rank * self.bundle.seq_len // length)
        if isinstance(dataset, FreshExamples):  # endless: read as many as a validation would
            limit = limit or self.evaluation_batches()
            size = limit * per_rank
        else:
            size = len(dataset)
        if limit is not None:
            size = min(size, limit * per_rank)
        indices = list(range(trainer.global_rank, size, trainer.world_size))
        return self._loader(torch.utils.data.Subset(dataset, indices), batch_size=per_rank, shuffle=False)

    def evaluation_batches(self) -> int:
        """Batches each evaluation reads of the validation split (and of the training examples)."""
        limit = self.train_options.eval_batches
        return limit if limit is not None else -(-len(self.bundle.val) // self.train_options.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        """The validation split, then as many examples the run trained on (the first steps' batches, or the
        start of a finite set), so every evaluation also says how far training accuracy runs ahead."""
        limit = self.train_options.eval_batches
        return [self._evaluation_loader(self.bundle.val, limit),
                self._evaluation_loader(self._train_dataset(), self.evaluation_batches())]

    def test_splits(self) -> list[str]:
        """The metric prefix of each loader of :meth:`test_dataloader`: ``test``, then ``test@<length>``."""
        return ["test", *(f"test@{length}" for length in self.bundle.length_tests)]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The whole held-out test split (validation where the task has none), then, where the data has
        test sets at other lengths (``bundle.length_tests``), each of them whole, in the order of
        :meth:`test_splits`."""
        test = self._evaluation_loader(self.bundle.test if self.bundle.test is not None else self.bundle.val, None)
        if not self.bundle.length_tests:
            return test
        return [test, *(self._evaluation_loader(dataset, None, length)
                        for length, dataset in self.bundle.length_tests.items())]
