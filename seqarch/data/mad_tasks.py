"""MAD's selective copying, compression and memorisation (Poli et al., 2024, arXiv 2403.17844), with the
solvers that know each rule.

- Selective copying: ``num_tokens`` data tokens (ids ``0 .. vocab_size - 3``) scattered over a context of
  blanks (id ``vocab_size - 2``), then the copy token (``vocab_size - 1``) and ``num_tokens`` blanks; at
  the i-th trailing blank the target is the i-th data token.
- Compression: ``seq_len - 1`` random tokens (ids ``0 .. vocab_size - 2``) and the compression token
  (``vocab_size - 1``); the target is the whole input, to be rebuilt from the model's last position
  alone (a :class:`seqarch.models.SequenceAutoencoder`, data kind ``"autoencoder"``).
- Memorisation: ``seq_len // 2`` pairs ``key, insert`` (insert id ``vocab_size - 1``); at the insert
  token the target is the key's value under one fixed map, the same in every example of the run, so it
  must be learned into the weights. Keys are ids ``0 .. (vocab_size - 1) // 2 - 1``, values the ids above.
"""

from __future__ import annotations

import torch

from ..losses import IGNORE_INDEX
from .sampling import sample_without_replacement, seeded_generator


def selective_copying(*, vocab_size: int, seq_len: int, num_tokens: int, num_examples: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; the data tokens sit at uniformly
    drawn positions of the ``seq_len - num_tokens - 1`` context positions, in order."""
    generator = seeded_generator(seed)
    context = seq_len - num_tokens - 1
    blank, copy = vocab_size - 2, vocab_size - 1
    positions = sample_without_replacement(generator, num_examples, context, num_tokens).sort(dim=1).values
    data = torch.randint(0, vocab_size - 2, (num_examples, num_tokens), generator=generator)
    inputs = torch.full((num_examples, seq_len), blank, dtype=torch.long)
    inputs.scatter_(1, positions, data)
    inputs[:, context] = copy
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, context + 1:] = data
    return inputs, targets


def selective_copying_solver(inputs: torch.Tensor, *, vocab_size: int, num_tokens: int) -> torch.Tensor:
    """The non-blank tokens before the copy token of ``inputs: (batch, seq_len)``, in order, at the
    trailing blanks; ``(batch, seq_len)``, -100 elsewhere."""
    context = inputs.shape[1] - num_tokens - 1
    is_data = inputs[:, :context] < vocab_size - 2
    # A stable sort puts the data positions first, in their original order.
    order = torch.sort((~is_data).to(torch.int8), dim=1, stable=True).indices[:, :num_tokens]
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    predictions[:, context + 1:] = inputs.gather(1, order)
    return predictions


def compression(*, vocab_size: int, seq_len: int, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; targets equal the inputs."""
    generator = seeded_generator(seed)
    inputs = torch.randint(0, vocab_size - 1, (num_examples, seq_len), generator=generator)
    inputs[:, -1] = vocab_size - 1
    return inputs, inputs.clone()


def compression_solver(inputs: torch.Tensor) -> torch.Tensor:
    """The rule: every input token, rebuilt."""
    return inputs.clone()


def memorization_map(vocab_size: int, seed: int) -> torch.Tensor:
    """The fixed map: ``(num_keys,)`` int64, the value id of each key id (distinct values, drawn once)."""
    symbols = vocab_size - 1
    num_keys = symbols // 2
    generator = seeded_generator(seed)
    return num_keys + torch.randperm(symbols - num_keys, generator=generator)[:num_keys]


def memorization(*, vocab_size: int, seq_len: int, num_examples: int, seed: int, value_of: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; keys drawn uniformly with replacement,
    each followed by the insert token, whose target is ``value_of[key]``."""
    generator = seeded_generator(seed)
    pairs = seq_len // 2
    keys = torch.randint(0, value_of.numel(), (num_examples, pairs), generator=generator)
    inputs = torch.full((num_examples, 2 * pairs), vocab_size - 1, dtype=torch.long)
    inputs[:, 0::2] = keys
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, 1::2] = value_of[keys]
    return inputs, targets


def memorization_solver(inputs: torch.Tensor, *, value_of: torch.Tensor) -> torch.Tensor:
    """The rule (the map itself): at each insert token, the value of the key before it."""
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    predictions[:, 1::2] = value_of[inputs[:, 0::2]]
    return predictions
