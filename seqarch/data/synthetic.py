"""Selective copying (Gu & Dao, 2023, the Mamba paper) and induction heads (Olsson et al., 2022; the
associative-recall form used by H3, Fu et al., 2023). Both are ``lm`` tasks: targets are -100 except at
the positions to predict, and a causal model predicts them from the inputs it has read so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import checks
from ..losses import IGNORE_INDEX
from .bundle import DataBundle
from .fresh import SPLIT_DEFAULTS, synthetic_bundle
from .options import check_int, resolve_options
from .sampling import sample_without_replacement, seeded_generator

NOISE_TOKEN = 0
COPY_MARKER = 1
FIRST_DATA_TOKEN = 2

SELECTIVE_COPY_DEFAULTS: dict[str, Any] = {
    # The Mamba paper uses 16 tokens to copy out of 4096 positions; this default fits a CPU.
    "vocab_size": 16,
    "seq_len": 256,
    "num_tokens": 16,
    **SPLIT_DEFAULTS,
}

INDUCTION_DEFAULTS: dict[str, Any] = {
    # H3's induction-head setting: vocabulary 20, sequence length 30 (a trigger token included).
    "vocab_size": 20,
    "seq_len": 30,
    **SPLIT_DEFAULTS,
}

TRIGGER_TOKEN = 0


def selective_copy(*, vocab_size: int, seq_len: int, num_tokens: int, num_examples: int, seed: int):
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64.

    ``inputs``: a context of ``seq_len - num_tokens`` positions holding ``num_tokens`` data tokens (ids
    ``2 .. vocab_size - 1``) at random positions, noise id 0 everywhere else; then ``num_tokens`` copy
    markers (id 1). ``targets``: at the i-th marker, the i-th data token in order of position; -100
    elsewhere. Unlike plain copying, where the data sit varies, so a time-invariant filter cannot copy.
    """
    generator = seeded_generator(seed)
    context = seq_len - num_tokens
    positions = sample_without_replacement(generator, num_examples, context, num_tokens).sort(dim=1).values
    data = torch.randint(FIRST_DATA_TOKEN, vocab_size, (num_examples, num_tokens), generator=generator)
    inputs = torch.full((num_examples, seq_len), NOISE_TOKEN, dtype=torch.long)
    inputs.scatter_(1, positions, data)
    inputs[:, context:] = COPY_MARKER
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets[:, context:] = data
    return inputs, targets


def selective_copy_solver(inputs: torch.Tensor, *, num_tokens: int) -> torch.Tensor:
    """The data tokens of ``inputs: (batch, seq_len)`` in order, placed at the copy markers;
    ``(batch, seq_len)`` with -100 elsewhere."""
    context = inputs.shape[1] - num_tokens
    is_data = inputs[:, :context] >= FIRST_DATA_TOKEN
    # A stable sort puts the data positions first, in their original order.
    order = torch.sort((~is_data).to(torch.int8), dim=1, stable=True).indices[:, :num_tokens]
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    predictions[:, context:] = inputs.gather(1, order)
    return predictions


def induction_heads(*, vocab_size: int, seq_len: int, num_examples: int, seed: int):
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64.

    Random tokens from ids ``1 .. vocab_size - 1``; the trigger (id 0) appears once at a random position
    ``p <= seq_len - 3`` and again at the last position; the target there is the token that followed
    the first trigger (``inputs[p + 1]``), -100 elsewhere.
    """
    generator = seeded_generator(seed)
    inputs = torch.randint(TRIGGER_TOKEN + 1, vocab_size, (num_examples, seq_len), generator=generator)
    trigger_at = torch.randint(0, seq_len - 2, (num_examples, 1), generator=generator)
    inputs.scatter_(1, trigger_at, TRIGGER_TOKEN)
    inputs[:, -1] = TRIGGER_TOKEN
    targets = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.long)
    targets[:, -1] = inputs.gather(1, trigger_at + 1).squeeze(1)
    return inputs, targets


def induction_solver(inputs: torch.Tensor) -> torch.Tensor:
    """At the last position, the token after the first trigger; ``(batch, seq_len)``, -100 elsewhere."""
    first_trigger = (inputs == TRIGGER_TOKEN).to(torch.int8).argmax(dim=1, keepdim=True)
    predictions = torch.full_like(inputs, IGNORE_INDEX)
    predictions[:, -1] = inputs.gather(1, first_trigger + 1).squeeze(1)
    return predictions


def build_selective_copy(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    options = resolve_options("selective_copy", spec, SELECTIVE_COPY_DEFAULTS)
    vocab_size = check_int(options, "vocab_size", minimum=FIRST_DATA_TOKEN + 1)
    num_tokens = check_int(options, "num_tokens")

    def check_length(argument: str, value) -> int:  # a context at least as long as the tokens it holds
        return checks.check_int(argument, value, minimum=2 * num_tokens)

    shape = {"vocab_size": vocab_size, "seq_len": check_length("data.seq_len", options["seq_len"]),
             "num_tokens": num_tokens}
    return synthetic_bundle("selective_copy", selective_copy, shape, options, seed, check_length)


def build_induction(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    options = resolve_options("induction", spec, INDUCTION_DEFAULTS)

    def check_length(argument: str, value) -> int:  # a trigger, its answer and the final trigger
        return checks.check_int(argument, value, minimum=3)

    shape = {"vocab_size": check_int(options, "vocab_size", minimum=3),
             "seq_len": check_length("data.seq_len", options["seq_len"])}
    return synthetic_bundle("induction", induction_heads, shape, options, seed, check_length)
