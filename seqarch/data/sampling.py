"""Vectorised sampling shared by the synthetic tasks; every draw comes from an explicit generator."""

from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk's noise stays near 4M floats, whatever the population.
_CHUNK_ELEMENTS = 1 << 22


def sample_without_replacement(
    generator: torch.Generator, num_rows: int, population: int, k: int, log_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``(num_rows, k)`` distinct indices in ``[0, population)`` per row, in draw order.

    Gumbel top-k: the k largest of ``log_weights + Gumbel noise`` are distributed exactly like k
    successive draws without replacement with probabilities proportional to ``exp(log_weights)``
    (what ``numpy.random.choice(replace=False, p=...)`` does one row at a time). Uniform when
    ``log_weights`` is None.
    """
    if not 0 <= k <= population:
        raise ValueError(f"k: expected an integer in [0, {population}] (the population), got {k}")
    if log_weights is None and k * k <= 4 * population:
        return _uniform_by_rejection(generator, num_rows, population, k)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(population, 1))
    chunks = []
    for start in range(0, num_rows, rows_per_chunk):
        rows = min(rows_per_chunk, num_rows - start)
        noise = torch.rand(rows, population, generator=generator, dtype=torch.float64)
        if log_weights is not None:
            # U in [0, 1): U == 0 gives -inf, an index that is simply never chosen.
            noise = log_weights - torch.log(-torch.log(noise))
        chunks.append(noise.topk(k, dim=1).indices)
    if not chunks:
        return torch.empty(0, k, dtype=torch.long)
    return torch.cat(chunks)


def _uniform_by_rejection(generator: torch.Generator, num_rows: int, population: int, k: int) -> torch.Tensor:
    """Uniform distinct k-tuples by redrawing every row that holds a repeat: exact, and far cheaper than
    noise over the whole population when ``k * k <= 4 * population`` (about e**2 draws per row at worst)."""
    samples = torch.randint(population, (num_rows, k), generator=generator)
    redraw = torch.arange(num_rows)
    while redraw.numel():
        ordered = samples[redraw].sort(dim=1).values
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        redraw = redraw[repeats]
        samples[redraw] = torch.randint(population, (redraw.numel(), k), generator=generator)
    return samples


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
