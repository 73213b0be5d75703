"""The MAD tasks: rule-knowing solvers score 100%, a constant predictor about chance, the variants change
what they claim, data are deterministic by seed, bad options are named."""

import pytest
import torch

from seqarch.data import IGNORE_INDEX, build_data
from seqarch.data.mad import MAD_TASKS, mad_solver, mad_variants
from seqarch.data.mad_recall import fuzzy_in_context_recall, in_context_recall
from seqarch.models import ModelConfig, SequenceAutoencoder

SMALL = {"num_train": 64, "num_test": 256}
# Chance of the most common answer, with some slack: keys' values (recall), data tokens, the map's values.
CHANCE = {"mad_in_context_recall": 1 / 8, "mad_fuzzy_recall": 1 / 7, "mad_noisy_recall": 1 / 8,
          "mad_selective_copy": 1 / 14, "mad_compression": 1 / 15, "mad_memorization": 1 / 127}


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    scored = targets != IGNORE_INDEX
    return float(((predictions == targets) & scored).sum() / scored.sum())


def small(spec: dict) -> dict:
    return {**spec, **SMALL}


def test_the_suite_has_mads_variants():
    counts = {task: len(mad_variants(task)) for task in MAD_TASKS}
    assert counts == {"mad_in_context_recall": 11, "mad_fuzzy_recall": 11, "mad_noisy_recall": 14,
                      "mad_selective_copy": 13, "mad_compression": 11, "mad_memorization": 6}
    label, spec = mad_variants("mad_noisy_recall")[-1]
    assert label == "frac_noise=0.8" and spec["frac_noise"] == 0.8 and spec["vocab_size"] == 32


@pytest.mark.parametrize("task", MAD_TASKS)
def test_solver_scores_100_percent_and_a_constant_about_chance(task):
    constants = []
    # The baseline and the first change (a larger vocabulary) of every task.
    for _, spec in mad_variants(task)[:2]:
        bundle = build_data(small(spec), seed=1)
        inputs, targets = bundle.val.tensors
        assert accuracy(mad_solver(spec, inputs, seed=1), targets) == 1.0
        most_common = int(targets[targets != IGNORE_INDEX].mode().values)
        constants.append(accuracy(torch.full_like(targets, most_common), targets))
    assert 0.5 * CHANCE[task] < constants[0] < 2 * CHANCE[task]
    assert constants[1] < constants[0]  # a larger vocabulary: a lower chance


@pytest.mark.parametrize("task", MAD_TASKS)
def test_deterministic_by_seed_and_splits_differ(task):
    spec = small(mad_variants(task)[0][1])
    first, again, other = build_data(spec, seed=3), build_data(spec, seed=3), build_data(spec, seed=4)
    for a, b in zip(first.train.tensors + first.val.tensors, again.train.tensors + again.val.tensors):
        assert torch.equal(a, b)
    assert not torch.equal(first.train.tensors[0], other.train.tensors[0])
    assert not torch.equal(first.train.tensors[0][:64], first.val.tensors[0][:64])
    inputs, targets = first.train[0]
    assert inputs.shape == targets.shape == (first.seq_len,)
    assert int(first.val.tensors[0].max()) < first.vocab_size


def test_variants_change_what_they_claim():
    recall = {label: build_data(small(spec), seed=0) for label, spec in mad_variants("mad_in_context_recall")}
    assert recall["baseline"].seq_len == 127 and recall["seq_len=256"].seq_len == 255  # MAD's seq_len - 1
    assert int(recall["baseline"].val.tensors[0].max()) == 15
    assert int(recall["vocab_size=128"].val.tensors[0].max()) == 127
    full = build_data(mad_variants("mad_in_context_recall")[0][1], seed=0)
    assert len(full.train) == 12800 and len(full.val) == 1280
    assert len(build_data({**mad_variants("mad_in_context_recall")[-1][1], "num_test": 8}, seed=0).train) == 800
    copies = dict(mad_variants("mad_selective_copy"))
    scored = build_data(small(copies["num_tokens=32"]), seed=0).val.tensors[1] != IGNORE_INDEX
    assert (scored.sum(1) == 32).all()
    memorize = dict(mad_variants("mad_memorization"))
    assert build_data(memorize["vocab_size=1024"], seed=0).vocab_size == 1024
    assert build_data(small(dict(mad_variants("mad_compression"))["seq_len=64"]), seed=0).seq_len == 64


def test_noise_fraction_is_the_fraction_of_noise_pairs():
    for frac in (0.2, 0.6):
        inputs, _, _ = in_context_recall(vocab_size=32, seq_len=128, num_examples=400, seed=0, noise_vocab_size=16,
                                         frac_noise=frac)
        noise_pairs = (inputs[:, 0:-1:2] >= 16)  # noise ids are 16 .. 31; the last key is never noise
        assert abs(float(noise_pairs[:, :-1].float().mean()) - frac) < 0.02


def test_recall_targets_are_the_values_of_repeated_keys_and_training_takes_every_next_token():
    inputs, targets, train_targets = in_context_recall(vocab_size=16, seq_len=16, num_examples=50, seed=2)
    assert torch.equal(train_targets[:, :-1], inputs[:, 1:])
    assert (targets[:, 1::2] == IGNORE_INDEX).all()  # nothing is asked at a value
    for row, answers in zip(inputs.tolist(), targets.tolist()):
        value_of = {}
        for t in range(0, len(row), 2):
            assert answers[t] == value_of.get(row[t], IGNORE_INDEX)
            if t + 1 < len(row):
                value_of.setdefault(row[t], row[t + 1])
        assert answers[-1] != IGNORE_INDEX  # the last key was presented before


def test_fuzzy_validation_keys_are_full_length_motifs():
    inputs, targets, _ = fuzzy_in_context_recall(vocab_size=16, seq_len=64, num_examples=20, seed=0,
                                                 is_training=False)
    for row in inputs.tolist():
        runs, current = [], 0
        for token in row:
            if token < 7:
                current += 1
            elif current:
                runs.append(current)
                current = 0
        assert set(runs) == {3}
    assert (targets[:, -1] != IGNORE_INDEX).all()


def test_compression_is_an_autoencoder_task():
    bundle = build_data(small(mad_variants("mad_compression")[0][1]), seed=0)
    assert bundle.kind == "autoencoder"
    inputs, targets = bundle.val.tensors
    assert torch.equal(inputs, targets) and (inputs[:, -1] == 15).all()
    model = SequenceAutoencoder(ModelConfig(vocab_size=16, d_model=16, n_layers=1))
    logits = model(inputs[:4])
    assert logits.shape == (4, 32, 16)
    assert torch.isfinite(model.loss(inputs[:4], targets[:4]))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"task": "mad_selective_copy", "seq_len": 20, "num_tokens": 16}, "data.seq_len: expected an integer >= 33"),
        ({"task": "mad_noisy_recall", "frac_noise": 1.5}, "data.frac_noise"),
        ({"task": "mad_memorization", "seq_len": 31}, "data.seq_len: expected an even length"),
        ({"task": "mad_fuzzy_recall", "k_motif_size": 9}, "data.vocab_size"),
        ({"task": "mad_compression", "num_kv_pairs": 4}, "data.num_kv_pairs: unknown key"),
    ],
)
def test_bad_options_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_data(spec, seed=0)


def test_mad_solver_rejects_another_task():
    with pytest.raises(ValueError, match="spec.task"):
        mad_solver({"task": "mqar"}, torch.zeros(1, 4, dtype=torch.long), seed=0)
