"""Multi-query associative recall (MQAR) from Zoology (Arora et al., 2023, arXiv 2312.04927).

A vectorised reproduction of Zoology's ``multiquery_ar`` generator: each example starts with
``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...`` (keys distinct, drawn from ids
``1 .. vocab_size // 2 - 1``; values distinct, from ``vocab_size // 2 .. vocab_size - 1``); each key is
then queried once more, at even offsets ``2 * gap`` after the pairs, the gaps drawn without replacement
from a power law ``p(g) ~ a * (g + 1) ** (a - 1)`` (``a = power_a``), so most queries sit close to the
pairs. Every other position holds a random token from the whole vocabulary (Zoology's
``random_non_queries``; zeros when it is off). Targets are the next token, but only where that token is
an answer (the value of the key just read); -100 everywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import checks
from ..losses import IGNORE_INDEX
from .bundle import DataBundle
from .fresh import SPLIT_DEFAULTS, synthetic_bundle
from .options import check_float, check_int, resolve_options
from .sampling import sample_without_replacement, seeded_generator

MQAR_DEFAULTS: dict[str, Any] = {
    # Zoology's smallest configuration (the paper sweeps vocab 8192 and longer sequences).
    "vocab_size": 256,
    "seq_len": 64,
    "num_kv_pairs": 4,
    **SPLIT_DEFAULTS,  # num_train null: fresh examples every step (Zoology trains on a finite 100k set)
    "power_a": 0.01,
    "random_non_queries": True,
}


def check_mqar_shape(vocab_size: int, seq_len: int, num_kv_pairs: int, *, prefix: str = "",
                     seq_len_name: str | None = None) -> None:
    """The exact constraints: ``seq_len >= 4 * num_kv_pairs`` (the ``(seq_len - 2 * num_kv_pairs) // 2``
    query slots hold every key once) and ``vocab_size // 2 - 1 >= num_kv_pairs`` (distinct keys from
    ids ``1 .. vocab_size // 2 - 1``; the values' half is at least as large).

    Zoology also asserts ``vocab_size > seq_len`` and an even ``seq_len``; neither is needed for a
    well-formed example, so neither is required here. Errors name ``{prefix}seq_len`` and
    ``{prefix}vocab_size`` (``seq_len_name``, where given, instead of the first).
    """
    if seq_len < 4 * num_kv_pairs:
        seq_len_name = seq_len_name or f"{prefix}seq_len"
        raise ValueError(
            f"{seq_len_name}: expected >= 4 * num_kv_pairs = {4 * num_kv_pairs} (pairs plus one query slot "
            f"per key), got {seq_len}"
        )
    if vocab_size // 2 - 1 < num_kv_pairs:
        raise ValueError(
            f"{prefix}vocab_size: expected >= {2 * num_kv_pairs + 2} so that {num_kv_pairs} distinct keys fit in "
            f"ids 1 .. vocab_size // 2 - 1, got {vocab_size}"
        )


def multiquery_ar(
    *,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; deterministic given ``seed``."""
    check_mqar_shape(vocab_size, seq_len, num_kv_pairs)
    generator = seeded_generator(seed)
    n, k = num_examples, num_kv_pairs
    context = 2 * k
    key_half = vocab_size // 2
    keys = sample_without_replacement(generator, n, key_half - 1, k) + 1
    values = sample_without_replacement(generator, n, vocab_size - key_half, k) + key_half

    space = (seq_len - context) // 2
    slots = torch.arange(1, space + 1, dtype=torch.float64)
    log_p = torch.log(power_a * slots ** (power_a - 1))
    gaps = sample_without_replacement(generator, n, space, k, log_weights=log_p)

    # One token longer than the inputs, as in Zoology: inputs = seq[:-1], targets = labels[1:].
    sequence = torch.zeros(n, seq_len + 1, dtype=torch.long)
    sequence[:, 0:context:2] = keys
    sequence[:, 1:context:2] = values
    query_positions = context + 2 * gaps
    sequence.scatter_(1, query_positions, keys)
    labels = torch.full((n, seq_len + 1), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, query_positions + 1, values)

    inputs, targets = sequence[:, :-1].clone(), labels[:, 1:].clone()
    if random_non_queries:
        noise = torch.randint(vocab_size, inputs.shape, generator=generator)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, targets


def lookup_solver(inputs: torch.Tensor, *, num_kv_pairs: int) -> torch.Tensor:
    """A non-learned MQAR solver: read the pairs at the start of ``inputs: (batch, seq_len)`` and, at each
    later position holding a key, predict its value. Returns ``(batch, seq_len)`` predictions, -100 where
    the input token is no key (so it predicts every answer, plus noise tokens that happen to equal a key)."""
    if inputs.dim() != 2:
        raise ValueError(f"inputs: expected rank 2 (batch, seq_len), got shape {tuple(inputs.shape)}")
    context = 2 * num_kv_pairs
    keys, values = inputs[:, 0:context:2], inputs[:, 1:context:2]
    matches = inputs[:, :, None] == keys[:, None, :]
    found = matches.any(-1)
    predicted = values.gather(1, matches.float().argmax(-1))
    predictions = torch.where(found, predicted, torch.full_like(predicted, IGNORE_INDEX))
    predictions[:, :context] = IGNORE_INDEX
    return predictions


def build_mqar(spec: Mapping[str, Any], *, seed: int, cache_dir=None) -> DataBundle:
    """MQAR's bundle (options: :data:`MQAR_DEFAULTS`; the split sizes: :data:`seqarch.data.fresh.SPLIT_SIZE_DOC`)."""
    options = resolve_options("mqar", spec, MQAR_DEFAULTS)
    vocab_size = check_int(options, "vocab_size", minimum=4)
    seq_len = check_int(options, "seq_len", minimum=4)
    num_kv_pairs = check_int(options, "num_kv_pairs", minimum=1)
    power_a = check_float(options, "power_a", low=0.0, high=1.0, open_low=True)
    if not isinstance(options["random_non_queries"], bool):
        raise ValueError(f"data.random_non_queries: expected true or false, got {options['random_non_queries']!r}")
    check_mqar_shape(vocab_size, seq_len, num_kv_pairs, prefix="data.")

    def check_length(argument: str, value) -> int:
        check_mqar_shape(vocab_size, checks.check_int(argument, value, minimum=4), num_kv_pairs, prefix="data.",
                         seq_len_name=argument)
        return value

    shape = {"vocab_size": vocab_size, "seq_len": seq_len, "num_kv_pairs": num_kv_pairs, "power_a": power_a,
             "random_non_queries": options["random_non_queries"]}
    return synthetic_bundle("mqar", multiquery_ar, shape, options, seed, check_length,
                            answers_per_example=num_kv_pairs)
