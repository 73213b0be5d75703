"""ListOps (Nangia & Bowman, 2018), the Long Range Arena task (Tay et al., 2020).

Expressions are generated locally with the published grammar (LRA's ``listops.py``): a node is a
digit 0-9 with probability 0.75 (always at ``max_depth``), else an operator ``[MAX``, ``[MIN``,
``[MED`` or ``[SM`` (sum mod 10) over 2..``max_args`` sub-expressions, closed by ``]``; whole
expressions are drawn until their length (in tokens) is strictly between ``min_length`` and
``max_length``. The label (10 classes) is the expression's value. LRA uses max_length 2000,
min_length 500, depth 10, 10 arguments; the defaults here are small enough for a CPU.

Tokens (the LRA/S4 pipelines drop the binary-tree parentheses of the TSV files):
pad 0, digits 0-9 -> 1-10, ``[MAX`` 11, ``[MIN`` 12, ``[MED`` 13, ``[SM`` 14, ``]`` 15.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle
from .options import check_int, resolve_options, split_seed

PAD_ID = 0
OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
VOCABULARY = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, CLOSE)
TOKEN_IDS = {token: index for index, token in enumerate(VOCABULARY)}
NUM_CLASSES = 10
VALUE_PROBABILITY = 0.75

# A tree: a digit, or (operator, [children]).
Tree = int | tuple[str, list["Tree"]]

LISTOPS_DEFAULTS: dict[str, Any] = {
    "seq_len": 256,
    "max_length": None,  # defaults to seq_len
    "min_length": None,  # defaults to max_length // 4 (LRA: 500 of 2000)
    "max_depth": 10,
    "max_args": 10,
    "num_train": 10000,
    "num_test": 1000,
}


class _TooLong(Exception):
    pass


def generate_tree(rng: random.Random, *, max_depth: int, max_args: int, max_length: int) -> tuple[Tree, int]:
    """One expression and its token count; raises ``_TooLong`` as soon as it reaches ``max_length``
    tokens (rejected anyway, so stopping early keeps the accepted distribution unchanged)."""
    length = 0
    # Every draw is one rng.random() call: randrange/randint/choice cost several times more, and
    # most generated trees are rejected.
    draw = rng.random

    def grow(depth: int) -> Tree:
        nonlocal length
        if depth >= max_depth or draw() < VALUE_PROBABILITY:
            length += 1
            if length >= max_length:
                raise _TooLong
            return int(draw() * 10)
        length += 2  # the operator and its closing bracket
        if length >= max_length:
            raise _TooLong
        num_args = 2 + int(draw() * (max_args - 1))
        operator = OPERATORS[int(draw() * len(OPERATORS))]
        return operator, [grow(depth + 1) for _ in range(num_args)]

    tree = grow(1)
    return tree, length


def evaluate_tree(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    operator, children = tree
    values = [evaluate_tree(child) for child in children]
    if operator == "[MAX":
        return max(values)
    if operator == "[MIN":
        return min(values)
    if operator == "[SM":
        return sum(values) % 10
    ordered = sorted(values)
    middle = len(ordered) // 2
    # int(np.median(values)) as in LRA: the mean of the two middle values, rounded down.
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2


def tree_tokens(tree: Tree) -> list[str]:
    if isinstance(tree, int):
        return [str(tree)]
    operator, children = tree
    return [operator, *(token for child in children for token in tree_tokens(child)), CLOSE]


def listops(*, num_examples: int, seed: int, seq_len: int, max_length: int, min_length: int,
            max_depth: int, max_args: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (n, seq_len) int64, labels (n,) int64, mask (n, seq_len) bool)``, right-padded with 0."""
    rng = random.Random(seed)
    tokens = torch.zeros(num_examples, seq_len, dtype=torch.long)
    labels = torch.empty(num_examples, dtype=torch.long)
    made = 0
    while made < num_examples:
        try:
            tree, length = generate_tree(rng, max_depth=max_depth, max_args=max_args, max_length=max_length)
        except _TooLong:
            continue
        if length <= min_length:
            continue
        tokens[made, :length] = torch.tensor([TOKEN_IDS[t] for t in tree_tokens(tree)])
        labels[made] = evaluate_tree(tree)
        made += 1
    return tokens, labels, tokens != PAD_ID


def build_listops(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    options = resolve_options("listops", spec, LISTOPS_DEFAULTS)
    seq_len = check_int(options, "seq_len", minimum=8)
    if options["max_length"] is None:
        options["max_length"] = seq_len
    max_length = check_int(options, "max_length", minimum=8, maximum=seq_len)
    if options["min_length"] is None:
        options["min_length"] = max_length // 4
    # Lengths must fall strictly between min_length and max_length, so the window needs room.
    min_length = check_int(options, "min_length", minimum=0, maximum=max_length - 2)
    max_depth = check_int(options, "max_depth", minimum=2)
    max_args = check_int(options, "max_args", minimum=2)
    shape = {"seq_len": seq_len, "max_length": max_length, "min_length": min_length, "max_depth": max_depth,
                 "max_args": max_args}
    num_train, num_test = check_int(options, "num_train"), check_int(options, "num_test")
    train = listops(num_examples=num_train, seed=split_seed(seed, "train"), **shape)
    val = listops(num_examples=num_test, seed=split_seed(seed, "val"), **shape)
    return DataBundle(
        train=TensorDataset(*train), val=TensorDataset(*val), kind="classification",
        vocab_size=len(VOCABULARY), seq_len=seq_len, num_classes=NUM_CLASSES,
        info={"task": "listops", **shape, "num_train": num_train, "num_val": num_test,
              "vocabulary": " ".join(VOCABULARY)},
    )
