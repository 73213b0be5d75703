"""The recall tasks of MAD (Poli et al., 2024, "Mechanistic Design and Scaling of Hybrid Architectures",
arXiv 2403.17844): in-context recall, noisy in-context recall and fuzzy in-context recall, in MAD's
multi-query form (every repeated key is a query).

Token layout (ids, as in the MAD suite): with ``n = vocab_size - noise_vocab_size`` (in-context and noisy
recall) keys are ``0 .. n // 2 - 1``, values ``n // 2 .. n - 1`` and noise tokens ``n .. vocab_size - 1``.
Fuzzy recall reserves the last id as padding and has no noise: keys ``0 .. (vocab_size - 1) // 2 - 1``,
values up to ``vocab_size - 2``.

Targets: validation (MAD's test set) scores only the values of keys seen before in the sequence, -100
elsewhere; training, as in MAD, takes a loss at every next token (``train_targets``).
"""

from __future__ import annotations

import random

import torch

from ..losses import IGNORE_INDEX
from .sampling import seeded_generator


def recall_vocab(vocab_size: int, noise_vocab_size: int) -> tuple[int, int]:
    """``(num_keys, num_values)`` of in-context recall; key ids start at 0, value ids at ``num_keys``."""
    symbols = vocab_size - noise_vocab_size
    return symbols // 2, symbols - symbols // 2


def in_context_recall(*, vocab_size: int, seq_len: int, num_examples: int, seed: int, noise_vocab_size: int = 0,
                      frac_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, targets, train_targets)``, each ``(num_examples, seq_len - 1)`` int64 (MAD's length:
    ``seq_len // 2`` pairs, the last value only a target).

    Each example holds ``seq_len // 2 - 1`` key-value pairs; a key keeps its value within the example
    (values drawn per key, with replacement). Each pair is replaced by two noise tokens with probability
    ``frac_noise`` (one pair, chosen at random, never is). The last pair repeats a key presented before
    (uniformly over the distinct keys presented). ``targets`` hold the value after every repeated key.
    """
    num_keys, num_values = recall_vocab(vocab_size, noise_vocab_size)
    generator = seeded_generator(seed)
    n, pairs = num_examples, seq_len // 2 - 1
    keys = torch.randint(0, num_keys, (n, pairs), generator=generator)
    value_of = torch.randint(num_keys, num_keys + num_values, (n, num_keys), generator=generator)
    values = value_of.gather(1, keys)
    noise = torch.rand(n, pairs, generator=generator) < frac_noise
    noise[torch.arange(n), torch.randint(0, pairs, (n,), generator=generator)] = False
    noise_tokens = torch.randint(num_keys + num_values, vocab_size, (n, pairs, 2), generator=generator) \
        if noise_vocab_size else torch.zeros(n, pairs, 2, dtype=torch.long)

    position = torch.arange(pairs).expand(n, pairs)
    # First pair of each key (noise pairs count for no key): a later pair with that key is a query.
    first = torch.full((n, num_keys), pairs, dtype=torch.long)
    first.scatter_reduce_(1, keys, torch.where(noise, pairs, position), reduce="amin")
    first_of_pair = first.gather(1, keys)
    repeated = (first_of_pair < position) & ~noise
    is_first = (first_of_pair == position) & ~noise
    pick = (torch.rand(n, pairs, generator=generator) * is_first).argmax(1, keepdim=True)
    query = keys.gather(1, pick)

    sequence = torch.empty(n, 2 * pairs + 2, dtype=torch.long)
    sequence[:, 0:2 * pairs:2] = torch.where(noise, noise_tokens[..., 0], keys)
    sequence[:, 1:2 * pairs:2] = torch.where(noise, noise_tokens[..., 1], values)
    sequence[:, -2:-1] = query
    sequence[:, -1:] = value_of.gather(1, query)
    answers = torch.full_like(sequence, IGNORE_INDEX)
    answers[:, 1:2 * pairs:2] = torch.where(repeated, values, IGNORE_INDEX)
    answers[:, -1] = sequence[:, -1]
    return sequence[:, :-1].clone(), answers[:, 1:].clone(), sequence[:, 1:].clone()


def in_context_recall_solver(inputs: torch.Tensor, *, num_keys: int) -> torch.Tensor:
    """The rule: at a pair's key (even positions of ``inputs: (batch, length)``) that appeared in an
    earlier pair, the value that followed its first appearance. ``(batch, length)``, -100 elsewhere."""
    keys = inputs[:, 0::2]
    pairs = keys.shape[1]
    earlier = torch.ones(pairs, pairs, dtype=torch.bool).tril(-1)
    same = (keys[:, :, None] == keys[:, None, :]) & earlier & (keys < num_keys)[:, :, None]
    found = same.any(-1)
    first = same.to(torch.int8).argmax(-1)  # the first earlier pair with this key
    values = inputs[:, 1::2]
    # The last key has no value in the inputs; the first earlier pair always has one.
    predicted = values.gather(1, first.clamp_max(values.shape[1] - 1))
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    predictions[:, 0::2] = torch.where(found, predicted, IGNORE_INDEX)
    return predictions


def fuzzy_vocab(vocab_size: int) -> tuple[list[int], list[int], int]:
    """``(key ids, value ids, pad id)`` of fuzzy recall."""
    symbols = vocab_size - 1
    return list(range(symbols // 2)), list(range(symbols // 2, symbols)), vocab_size - 1


def fuzzy_in_context_recall(*, vocab_size: int, seq_len: int, num_examples: int, seed: int, k_motif_size: int = 3,
                            v_motif_size: int = 3, is_training: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, targets, train_targets)``, each ``(num_examples, seq_len)`` int64.

    Keys and values are motifs: runs of 1 .. ``k_motif_size`` (``v_motif_size``) distinct tokens of their
    vocabulary. Training examples draw every key's length at random; validation keys (MAD's test set)
    all have ``k_motif_size`` tokens, so a key ends where a model can tell. A key keeps its value within
    the example. Pairs fill the example up to room for the last pair, which repeats a presented key;
    the example is left-padded with the pad id. ``targets`` hold every value token that follows a repeated
    key (the prediction at the token before it). Drawn one example at a time (Python's ``random``,
    seeded): motifs of variable length do not vectorise, and these sets are small.
    """
    key_vocab, value_vocab, pad = fuzzy_vocab(vocab_size)
    rng = random.Random(seed)
    rows_inputs, rows_targets, rows_train = [], [], []
    room = seq_len + 1 - (k_motif_size + v_motif_size)  # the last pair always fits
    for _ in range(num_examples):
        value_of: dict[tuple[int, ...], tuple[int, ...]] = {}
        tokens: list[int] = []
        answers: list[int] = []
        while len(tokens) + k_motif_size + v_motif_size <= room:
            size = rng.randint(1, k_motif_size) if is_training else k_motif_size
            key = tuple(rng.sample(key_vocab, size))
            repeated = key in value_of
            if not repeated:
                value_of[key] = tuple(rng.sample(value_vocab, rng.randint(1, v_motif_size)))
            value = value_of[key]
            tokens += [*key, *value]
            answers += [IGNORE_INDEX] * len(key) + (list(value) if repeated else [IGNORE_INDEX] * len(value))
        key = rng.choice(list(value_of))
        tokens += [*key, *value_of[key]]
        answers += [IGNORE_INDEX] * len(key) + list(value_of[key])
        padding = seq_len + 1 - len(tokens)
        tokens = [pad] * padding + tokens
        answers = [IGNORE_INDEX] * padding + answers
        rows_inputs.append(tokens[:-1])
        rows_targets.append(answers[1:])
        rows_train.append(tokens[1:])
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.long).reshape(num_examples, seq_len)
    return as_tensor(rows_inputs), as_tensor(rows_targets), as_tensor(rows_train)


def fuzzy_recall_solver(inputs: torch.Tensor, *, vocab_size: int, k_motif_size: int) -> torch.Tensor:
    """The rule on validation examples (every key ``k_motif_size`` tokens long): after a repeated key and
    each of its value tokens but the last, the next token of the value stored at its first appearance.
    ``(batch, length)``, -100 elsewhere."""
    key_vocab, _, pad = fuzzy_vocab(vocab_size)
    is_key = lambda token: token < len(key_vocab)
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    for row, tokens in enumerate(inputs.tolist()):
        value_of: dict[tuple[int, ...], list[int]] = {}
        key: list[int] = []
        value: list[int] = []
        for t, token in enumerate(tokens):
            if token == pad:
                continue
            if is_key(token):
                if value:  # a new pair starts: the last one is complete
                    value_of.setdefault(tuple(key), value)
                    key, value = [], []
                key.append(token)
                if len(key) == k_motif_size and tuple(key) in value_of:
                    predictions[row, t] = value_of[tuple(key)][0]
            else:
                value.append(token)
                known = value_of.get(tuple(key))
                if known is not None and len(value) < len(known):
                    predictions[row, t] = known[len(value)]
    return predictions
