"""ListOps: labels agree with an independent evaluator of the token sequence; lengths; determinism."""

import pytest
import torch

from seqarch.data import build_data, listops
from seqarch.data.listops import VOCABULARY

SHAPE = {"seq_len": 128, "max_length": 100, "min_length": 20, "max_depth": 6, "max_args": 5}


def evaluate_token_ids(ids: list[int]) -> int:
    """A stack evaluator over token ids (independent of the generator's tree evaluator)."""
    stack: list = []
    for token in (VOCABULARY[i] for i in ids):
        if token == "]":
            arguments = []
            while not isinstance(stack[-1], str):
                arguments.append(stack.pop())
            operator = stack.pop()
            if operator == "[MAX":
                value = max(arguments)
            elif operator == "[MIN":
                value = min(arguments)
            elif operator == "[SM":
                value = sum(arguments) % 10
            else:  # [MED, as int(np.median(...))
                value = int(torch.tensor(arguments, dtype=torch.float64).quantile(0.5).item())
            stack.append(value)
        elif token.startswith("["):
            stack.append(token)
        else:
            stack.append(int(token))
    assert len(stack) == 1
    return stack[0]


def test_labels_match_an_independent_evaluator():
    tokens, labels, mask = listops(num_examples=300, seed=0, **SHAPE)
    for row, label, row_mask in zip(tokens, labels, mask):
        length = int(row_mask.sum())
        assert row_mask[:length].all() and not row_mask[length:].any()  # right-padded
        assert evaluate_token_ids(row[:length].tolist()) == int(label)
    assert torch.equal(mask, tokens != 0)
    assert set(labels.tolist()) == set(range(10))


def test_lengths_stay_inside_the_limits():
    tokens, _, mask = listops(num_examples=300, seed=1, **SHAPE)
    lengths = mask.sum(1)
    assert (lengths > 20).all() and (lengths < 100).all()
    assert tokens.shape == (300, 128) and int(tokens.max()) < len(VOCABULARY)
    assert lengths.float().std() > 5  # a spread of lengths, not one size


def test_bundle_is_classification_and_deterministic():
    spec = {"task": "listops", "num_train": 40, "num_test": 20, **SHAPE}
    torch.manual_seed(0)
    bundle = build_data(spec, seed=2)
    torch.manual_seed(1)
    again = build_data(spec, seed=2)
    assert bundle.kind == "classification" and bundle.num_classes == 10 and bundle.vocab_size == 16
    tokens, label, mask = bundle.train[0]
    assert tokens.shape == mask.shape == (128,) and label.shape == () and mask.dtype == torch.bool
    assert all(torch.equal(a, b) for a, b in zip(bundle.train.tensors, again.train.tensors))
    assert not torch.equal(bundle.train.tensors[0][:20], bundle.val.tensors[0])


def test_defaults_tie_max_length_to_seq_len():
    bundle = build_data({"task": "listops", "seq_len": 64, "num_train": 10, "num_test": 5}, seed=0)
    assert bundle.info["max_length"] == 64 and bundle.info["min_length"] == 16
    assert bundle.train.tensors[2].sum(1).max() < 64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"seq_len": 64, "max_length": 65}, "data.max_length: expected an integer in \\[8, 64\\]"),
        ({"max_length": 50, "min_length": 49}, "data.min_length"),
        ({"max_args": 1}, "data.max_args"),
        ({"depth": 3}, "data.depth: unknown key for task 'listops'"),
    ],
)
def test_bad_options_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        build_data({"task": "listops", **spec}, seed=0)
