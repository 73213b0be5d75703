"""MQAR (Zoology): layout, power-law queries, solvability by lookup, determinism, option checks."""

import pytest
import torch

from seqarch.data import IGNORE_INDEX, build_data, lookup_solver, multiquery_ar
from seqarch.data.sampling import sample_without_replacement, seeded_generator

SHAPE = {"vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4}


def test_layout_follows_zoology():
    inputs, targets = multiquery_ar(**SHAPE, num_examples=500, seed=0)
    assert inputs.shape == targets.shape == (500, 64) and inputs.dtype == targets.dtype == torch.long
    keys, values = inputs[:, 0:8:2], inputs[:, 1:8:2]
    assert ((keys >= 1) & (keys < 128)).all() and ((values >= 128) & (values < 256)).all()
    assert all(len(set(row.tolist())) == 4 for row in keys)  # distinct keys per example
    answered = targets != IGNORE_INDEX
    assert (answered.sum(1) == 4).all()
    assert not answered[:, :8].any()  # no answer inside the pairs
    # At an answer position the input is a key (the query) and the target is that key's value.
    rows, cols = answered.nonzero(as_tuple=True)
    query_keys = inputs[rows, cols]
    slot = (keys[rows] == query_keys[:, None]).float().argmax(1)
    assert (keys[rows, slot] == query_keys).all()
    assert (values[rows, slot] == targets[rows, cols]).all()
    assert ((cols - 8) % 2 == 0).all()  # queries at even offsets after the pairs, as in Zoology


def test_lookup_solver_recovers_every_answer():
    inputs, targets = multiquery_ar(vocab_size=512, seq_len=128, num_kv_pairs=16, num_examples=300, seed=3)
    predictions = lookup_solver(inputs, num_kv_pairs=16)
    answered = targets != IGNORE_INDEX
    assert answered.sum() == 300 * 16
    assert torch.equal(predictions[answered], targets[answered])


def test_queries_follow_a_power_law():
    _, targets = multiquery_ar(vocab_size=256, seq_len=256, num_kv_pairs=4, num_examples=2000, seed=1)
    gaps = ((targets != IGNORE_INDEX).nonzero()[:, 1] - 8) // 2  # gap slots 0 .. 123
    counts = torch.bincount(gaps, minlength=124)
    # p(gap) ~ (gap + 1) ** -0.99: the first slot is ~100x likelier than the last.
    assert counts[0] > 10 * counts[-10:].float().mean().clamp_min(1)
    assert gaps.float().median() < 30


def test_noise_fills_the_rest_or_zeros_when_off():
    inputs, targets = multiquery_ar(**SHAPE, num_examples=200, seed=0, random_non_queries=False)
    filler = torch.ones_like(inputs, dtype=torch.bool)
    filler[:, :8] = False
    filler[targets != IGNORE_INDEX] = False
    assert (inputs[filler] == 0).all()
    noisy, _ = multiquery_ar(**SHAPE, num_examples=200, seed=0)
    assert noisy[filler].unique().numel() > 100


def test_deterministic_and_independent_of_global_rng():
    torch.manual_seed(1)
    first = multiquery_ar(**SHAPE, num_examples=100, seed=7)
    torch.manual_seed(2)
    second = multiquery_ar(**SHAPE, num_examples=100, seed=7)
    other = multiquery_ar(**SHAPE, num_examples=100, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


def test_build_data_train_and_val_differ():
    bundle = build_data({"task": "mqar", "num_train": 200, "num_test": 50}, seed=0)
    assert (len(bundle.train), len(bundle.val)) == (200, 50)
    assert not torch.equal(bundle.train[0][0], bundle.val[0][0])
    again = build_data({"task": "mqar", "num_train": 200, "num_test": 50}, seed=0)
    assert torch.equal(bundle.val[49][1], again.val[49][1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"seq_len": 15, "num_kv_pairs": 4}, "data.seq_len: expected >= 4 * num_kv_pairs = 16"),
        ({"vocab_size": 9, "num_kv_pairs": 4}, "data.vocab_size: expected >= 10"),
        ({"power_a": 0}, "data.power_a"),
        ({"num_train": 0}, "data.num_train"),
        ({"num_kv_pairs": 2.5}, "data.num_kv_pairs: expected an integer"),
        ({"random_non_queries": "yes"}, "data.random_non_queries"),
        ({"num_pairs": 4}, "data.num_pairs: unknown key for task 'mqar'"),
    ],
)
def test_bad_options_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        build_data({"task": "mqar", **spec}, seed=0)


def test_exact_size_limits_are_accepted():
    inputs, targets = multiquery_ar(vocab_size=10, seq_len=16, num_kv_pairs=4, num_examples=50, seed=0)
    answered = targets != IGNORE_INDEX
    assert torch.equal(lookup_solver(inputs, num_kv_pairs=4)[answered], targets[answered])


@pytest.mark.parametrize(("population", "k"), [(6, 2), (40, 3), (9, 3)])  # rejection path, then Gumbel top-k
def test_uniform_sampling_without_replacement(population, k):
    samples = sample_without_replacement(seeded_generator(0), 60_000, population, k)
    assert samples.shape == (60_000, k) and samples.min() >= 0 and samples.max() < population
    assert (samples.sort(1).values.diff(dim=1) > 0).all()  # distinct within a row
    for column in range(k):
        frequency = torch.bincount(samples[:, column], minlength=population) / 60_000
        assert torch.allclose(frequency, torch.full_like(frequency, 1 / population), atol=0.01)


def test_weighted_sampling_matches_successive_draws():
    weights = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    samples = sample_without_replacement(seeded_generator(1), 100_000, 3, 2, log_weights=weights.log())
    first_is_zero = samples[:, 0] == 0
    assert abs(first_is_zero.double().mean() - 0.6) < 0.01
    # Given 0 first, the second is 1 with probability 0.3 / (0.3 + 0.1).
    assert abs((samples[first_is_zero, 1] == 1).double().mean() - 0.75) < 0.01
