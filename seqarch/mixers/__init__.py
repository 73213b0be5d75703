"""Sequence mixers, one module per family, all under the contract in :mod:`.base`."""

from .base import MIXERS, Mixer, build_mixer, register_mixer

# Importing a family module registers its mixers.
from . import attention, h3, hyena, m2, s4, s4d  # noqa: F401  isort: skip
from . import mamba, mamba2  # noqa: F401  isort: skip
from . import based, deltanet, gla, linear_attention, retnet, sliding_window_attention  # noqa: F401  isort: skip

__all__ = ["MIXERS", "Mixer", "build_mixer", "register_mixer"]
