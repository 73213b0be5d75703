"""What ``build_data`` returns: the datasets and the facts a model and a report need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

KINDS = ("lm", "classification", "autoencoder")


@dataclass(frozen=True)
class Metric:
    """The validation metric a task is judged by: what training stops at and comparisons rank by."""

    name: str
    higher_is_better: bool

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def reached(self, value: float, goal: float) -> bool:
        """Whether ``value`` is at least as good as ``goal``."""
        return value >= goal if self.higher_is_better else value <= goal


ACCURACY = Metric("val/accuracy", higher_is_better=True)
LOSS = Metric("val/loss", higher_is_better=False)


@dataclass
class DataBundle:
    """Train, validation and (where the task has one) test datasets of one task.

    ``train`` is a finite dataset or, for the synthetic tasks by default, an endless
    :class:`seqarch.data.fresh.FreshExamples` stream (no ``len``; example ``i`` fixed by the seed).
    ``val`` chooses learning rates and stops early; ``test`` is held out for the reported result
    (``None``: the task has no third split and reports fall back to validation).
    ``length_tests``: held-out test sets at other sequence lengths than ``seq_len`` (``data.test_lengths`` of
    the synthetic ``lm`` tasks; empty otherwise), by length ``L``: items as for ``test`` but of length ``L``
    (``inputs``, ``targets``: ``LongTensor(L)``), for measuring length generalisation of a model trained at
    ``seq_len``.

    ``kind == "lm"``: items are ``(inputs, targets)``, both ``LongTensor(seq_len)``; targets are -100
    where no loss is taken. ``kind == "classification"``: items are ``(tokens LongTensor(seq_len),
    label LongTensor(), mask BoolTensor(seq_len))``, mask True on real tokens (padding id 0 is False).
    ``kind == "autoencoder"``: items as for ``lm``, but every target is rebuilt from the model's last
    position alone (:class:`seqarch.models.SequenceAutoencoder`; MAD's compression task).
    ``vocab_size`` is the model's embedding size (special and padding ids included).
    ``metric``: what the task is judged by (accuracy of the scored positions unless told otherwise).
    ``recall``: a recall task, where accuracy is bought with recurrent state (reports plot the two).
    """

    train: Dataset
    val: Dataset
    kind: str
    vocab_size: int
    seq_len: int
    num_classes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metric: Metric = ACCURACY
    recall: bool = False
    test: Dataset | None = None
    length_tests: dict[int, Dataset] = field(default_factory=dict)

    @property
    def fresh_train(self) -> bool:
        """Whether training examples are drawn fresh every step (never repeated, nothing to memorise)."""
        from .fresh import FreshExamples

        return isinstance(self.train, FreshExamples)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "classification") != (self.num_classes is not None):
            raise ValueError(
                f"num_classes: expected an integer exactly for kind 'classification', got {self.num_classes!r} "
                f"for kind {self.kind!r}"
            )
