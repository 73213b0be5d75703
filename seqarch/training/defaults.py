"""The embedded default of ``seqarch compare``: the shipped ``experiments/mqar.yaml``.

The experiments folder installs as the package data ``seqarch.experiments``, so an
installed seqarch reads the same file a checkout does; there is no second copy.
"""

from __future__ import annotations

DEFAULT_EXPERIMENT = "mqar"


def default_config() -> dict:
    """The raw mapping of ``experiments/mqar.yaml`` (a fresh copy on every call)."""
    from .config import read_config_file

    return read_config_file(DEFAULT_EXPERIMENT)
