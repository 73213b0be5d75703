"""Selective copying and induction heads: layout, solvable by a simple solver, deterministic."""

import pytest
import torch

from seqarch.data import (
    IGNORE_INDEX,
    build_data,
    induction_heads,
    induction_solver,
    selective_copy,
    selective_copy_solver,
)


def test_selective_copy_layout():
    inputs, targets = selective_copy(vocab_size=16, seq_len=64, num_tokens=8, num_examples=300, seed=0)
    assert inputs.shape == targets.shape == (300, 64)
    context = inputs[:, :56]
    assert ((context >= 2).sum(1) == 8).all()  # exactly the data tokens, the rest is noise (0)
    assert ((context == 0) | (context >= 2)).all()
    assert (inputs[:, 56:] == 1).all()  # copy markers
    assert (targets[:, :56] == IGNORE_INDEX).all() and (targets[:, 56:] >= 2).all()
    # The data positions vary between examples (what makes the copy "selective").
    assert len({tuple((row >= 2).nonzero().flatten().tolist()) for row in context}) > 250


def test_selective_copy_solver_recovers_every_answer():
    inputs, targets = selective_copy(vocab_size=10, seq_len=100, num_tokens=16, num_examples=200, seed=5)
    predictions = selective_copy_solver(inputs, num_tokens=16)
    assert torch.equal(predictions, targets)


def test_induction_layout_and_solver():
    inputs, targets = induction_heads(vocab_size=20, seq_len=30, num_examples=500, seed=0)
    assert ((inputs == 0).sum(1) == 2).all()  # the trigger: once inside, once at the end
    assert (inputs[:, -1] == 0).all() and (inputs[:, -2] != 0).all()
    assert ((targets != IGNORE_INDEX).sum(1) == 1).all() and (targets[:, -1] >= 1).all()
    assert torch.equal(induction_solver(inputs), targets)
    first_trigger = (inputs == 0).int().argmax(1)
    assert first_trigger.unique().numel() > 20  # the trigger's position varies


@pytest.mark.parametrize("task", ["selective_copy", "induction"])
def test_deterministic_and_splits_differ(task):
    spec = {"task": task, "num_train": 64, "num_test": 32}
    torch.manual_seed(0)
    first = build_data(spec, seed=3)
    torch.manual_seed(1)
    second = build_data(spec, seed=3)
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])
    assert not torch.equal(first.train.tensors[0][:32], first.val.tensors[0])
    assert not torch.equal(build_data(spec, seed=4).train.tensors[0], first.train.tensors[0])
    assert first.kind == "lm" and first.train[0][0].shape == (first.seq_len,)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "selective_copy", "seq_len": 20, "num_tokens": 16}, "data.seq_len: expected an integer >= 32"),
        ({"task": "selective_copy", "vocab_size": 2}, "data.vocab_size"),
        ({"task": "induction", "seq_len": 2}, "data.seq_len"),
        ({"task": "induction", "num_tokens": 3}, "data.num_tokens: unknown key for task 'induction'"),
    ],
)
def test_bad_options_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_data(spec, seed=0)
