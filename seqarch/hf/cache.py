"""A transformers ``Cache`` holding every layer's seqarch recurrent state (the attention KV
cache, SSM states, convolution histories), made and advanced by seqarch's own
``init_state`` / ``prefill`` / ``step``.

Rows of a left-padded batch are grouped by their true prompt length: each group is
prefilled on its unpadded tokens alone (so no state ever reads a pad token) and stepped
together; a batch without padding is one group, run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from ..mixers.base import State


@dataclass
class RowGroup:
    """Rows ``rows: (n,)`` of the batch that share one list of per-layer states (one per layer)."""

    rows: torch.Tensor
    states: list[State]


class SeqarchCache(Cache):
    """Per-layer seqarch states for a batch, in groups of rows of equal prompt length.

    ``seen``: columns of the (padded) input consumed so far, what ``get_seq_length`` reports.
    """

    is_compileable = False

    def __init__(self) -> None:
        try:
            super().__init__(layers=[])
        except TypeError:  # transformers 4.x: Cache takes no arguments
            super().__init__()
        self.groups: list[RowGroup] = []
        self.seen = 0

    @property
    def empty(self) -> bool:
        return not self.groups

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.seen

    def get_max_length(self, layer_idx: int | None = None) -> int | None:
        return None

    def get_max_cache_shape(self, layer_idx: int | None = 0) -> int:
        return -1

    def get_mask_sizes(self, *args, **kwargs):  # pragma: no cover - masks are not built for seqarch
        raise ValueError("SeqarchCache: seqarch models build no attention masks from the cache")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise ValueError("generate: beam search is not supported by seqarch models (num_beams must be 1); "
                         "use greedy or sampled decoding")

    def __len__(self) -> int:
        return len(self.groups[0].states) if self.groups else 0

    def __repr__(self) -> str:
        return f"SeqarchCache(groups={len(self.groups)}, seen={self.seen})"
