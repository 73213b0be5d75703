"""The embedded default of ``seqarch compare``: MQAR at matched parameters.

The same config is ``experiments/mqar.yaml`` (a test keeps them equal). Sized so
that the four architectures train in under 10 minutes on 2 CPU cores: the
Zoology smallest example (vocab 256, length 64, 4 key-value pairs)
at 120k parameters (attention: width 64), 2 layers, stopping at 0.99
validation accuracy as Zoology does.
"""

from __future__ import annotations

import copy

DEFAULT_CONFIG: dict = {
    "name": "mqar",
    "data": {"task": "mqar", "vocab_size": 256, "seq_len": 64, "num_kv_pairs": 4,
             "num_train": 10000, "num_test": 1000},
    "model": {"d_model": 64, "n_layers": 2, "channel_mixer": "glu"},
    "architectures": ["attention", "s4d", "s4", "m2"],
    "budget": {"params": 120000},
    "train": {"steps": 1200, "batch_size": 64, "lr": 3.0e-3, "weight_decay": 0.1, "warmup_steps": 30,
              "eval_every": 100, "checkpoint_every": 600, "stop_at": 0.99, "seed": 0},
}


def default_config() -> dict:
    """A copy of :data:`DEFAULT_CONFIG`."""
    return copy.deepcopy(DEFAULT_CONFIG)
