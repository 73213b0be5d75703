"""build_data: the registry, defaults, the item contract of each kind, and errors that name the key."""

import pytest
import torch
from torch.utils.data import DataLoader

from seqarch.data import ACCURACY, DATA_SOURCES, LOSS, DataBundle, build_data
from seqarch.data.mad import MAD_TASKS, RECALL_TASKS

SMALL = {
    "mqar": {"num_train": 64, "num_test": 16},
    "selective_copy": {"num_train": 64, "num_test": 16, "seq_len": 64},
    "induction": {"num_train": 64, "num_test": 16},
    "listops": {"num_train": 64, "num_test": 16, "seq_len": 64},
    "text": {"max_files": 4, "seq_len": 64},
    **{task: {"num_train": 64, "num_test": 16} for task in MAD_TASKS},
}


def test_registry_lists_every_task():
    assert list(DATA_SOURCES) == ["mqar", "selective_copy", "induction", "text", "listops", *MAD_TASKS]
    assert set(SMALL) == set(DATA_SOURCES)


def test_mqar_defaults_are_zoologys_smallest_example():
    # Zoology's smallest shape; the training examples are fresh every step (no finite set to memorise).
    bundle = build_data({"task": "mqar"}, seed=0)
    assert (bundle.vocab_size, bundle.seq_len, len(bundle.val), len(bundle.test)) == (256, 64, 1000, 1000)
    assert bundle.fresh_train and bundle.info["train_data"] == "fresh"
    assert bundle.info["num_kv_pairs"] == 4 and bundle.info["power_a"] == 0.01 and bundle.num_classes is None


@pytest.mark.parametrize("task", sorted(SMALL))
def test_items_follow_the_contract_of_their_kind(task, tmp_path):
    bundle = build_data({"task": task, **SMALL[task]}, seed=0, cache_dir=tmp_path)
    assert isinstance(bundle, DataBundle) and bundle.info["task"] == task
    assert len(bundle.train) > 0 and len(bundle.val) > 0
    batch = next(iter(DataLoader(bundle.train, batch_size=8)))
    if bundle.kind in ("lm", "autoencoder"):
        inputs, targets = batch
        assert inputs.shape == targets.shape == (8, bundle.seq_len)
        assert inputs.dtype == targets.dtype == torch.long
        assert 0 <= int(inputs.min()) and int(inputs.max()) < bundle.vocab_size
        scored = targets[targets != -100]
        assert scored.numel() > 0 and int(scored.max()) < bundle.vocab_size and int(scored.min()) >= 0
    else:
        tokens, labels, mask = batch
        assert tokens.shape == mask.shape == (8, bundle.seq_len) and labels.shape == (8,)
        assert mask.dtype == torch.bool and torch.equal(mask, tokens != 0)
        assert int(tokens.max()) < bundle.vocab_size and int(labels.max()) < bundle.num_classes


@pytest.mark.parametrize("task", sorted(SMALL))
def test_same_seed_same_items_whatever_the_global_rng(task, tmp_path):
    spec = {"task": task, **SMALL[task]}
    torch.manual_seed(123)
    first = build_data(spec, seed=5, cache_dir=tmp_path)
    torch.manual_seed(456)
    second = build_data(spec, seed=5, cache_dir=tmp_path)
    for index in (0, len(first.val) - 1):
        assert all(torch.equal(a, b) for a, b in zip(first.val[index], second.val[index]))
    assert not torch.equal(first.train[0][0], first.val[0][0])


@pytest.mark.parametrize(
    ("spec", "seed", "message"),
    [
        ({"task": "foo"}, 0, ("data.task: expected one of mqar, selective_copy, induction, text, listops, "
                             "mad_in_context_recall, mad_fuzzy_recall, mad_noisy_recall, mad_selective_copy, "
                             "mad_compression, mad_memorization, got 'foo'")),
        ({}, 0, "data.task: expected one of .*, got None"),
        (["mqar"], 0, "data: expected a mapping"),
        ({"task": "mqar"}, -1, "seed: expected a non-negative integer, got -1"),
        ({"task": "mqar"}, 1.5, "seed: expected a non-negative integer"),
    ],
)
def test_bad_specs_are_value_errors(spec, seed, message):
    with pytest.raises(ValueError, match=message):
        build_data(spec, seed=seed)


def test_bundle_checks_its_kind():
    with pytest.raises(ValueError, match="kind: expected one of lm, classification, autoencoder, got 'regression'"):
        DataBundle(train=[], val=[], kind="regression", vocab_size=2, seq_len=2)
    with pytest.raises(ValueError, match="num_classes"):
        DataBundle(train=[], val=[], kind="classification", vocab_size=2, seq_len=2)


@pytest.mark.parametrize("task", sorted(SMALL))
def test_a_bundle_carries_the_metric_it_is_judged_by(task, tmp_path):
    bundle = build_data({"task": task, **SMALL[task]}, seed=0, cache_dir=tmp_path)
    if task == "text":
        assert bundle.metric == LOSS and bundle.metric.name == "val/loss" and not bundle.metric.higher_is_better
    else:
        assert bundle.metric == ACCURACY and bundle.metric.higher_is_better
    assert bundle.recall == (task in ("mqar", "selective_copy", "induction", *RECALL_TASKS))


def test_metrics_know_which_way_is_better():
    assert ACCURACY.better(0.9, 0.8) and not ACCURACY.better(0.8, 0.9) and ACCURACY.reached(0.99, 0.99)
    assert LOSS.better(1.0, 2.0) and LOSS.reached(1.4, 1.5) and not LOSS.reached(1.6, 1.5)
