"""``build_data``: one entry point from a config's ``data:`` section to a :class:`DataBundle`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .bundle import DataBundle
from .listops import build_listops
from .mad import MAD_SOURCES
from .mqar import build_mqar
from .options import check_seed
from .synthetic import build_induction, build_selective_copy
from .text_task import build_text

DataBuilder = Callable[..., DataBundle]

# name -> builder(spec, *, seed, cache_dir) -> DataBundle
DATA_SOURCES: dict[str, DataBuilder] = {
    "mqar": build_mqar,
    "selective_copy": build_selective_copy,
    "induction": build_induction,
    "text": build_text,
    "listops": build_listops,
    **MAD_SOURCES,
}


def build_data(spec: Mapping[str, Any], *, seed: int, cache_dir: str | os.PathLike | None = None) -> DataBundle:
    """Datasets for ``spec`` (a config's ``data:`` section, e.g. ``{"task": "mqar", "seq_len": 64}``).

    Every key has a default; an unknown task, an unknown key or a bad value raises a ``ValueError``
    naming ``data.<key>`` before anything is generated or written. Items are deterministic given
    ``seed``; train and validation are drawn from different streams. ``cache_dir`` (text only)
    defaults to ``$SEQARCH_CACHE`` or ``~/.cache/seqarch``.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"data: expected a mapping with a 'task' key, got {type(spec).__name__}")
    task = spec.get("task")
    if task not in DATA_SOURCES:
        raise ValueError(f"data.task: expected one of {', '.join(DATA_SOURCES)}, got {task!r}")
    return DATA_SOURCES[task](spec, seed=check_seed(seed), cache_dir=cache_dir)
