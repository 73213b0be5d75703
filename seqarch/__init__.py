"""seqarch: alternative sequence architectures behind one layer contract.

>>> import seqarch
>>> mixer = seqarch.build_mixer("s4d", 64)
"""

from .mixers import MIXERS, Mixer, build_mixer, register_mixer
from .models import LanguageModel, ModelConfig, ResidualBlock, SequenceClassifier

__version__ = "0.1.0"

__all__ = [
    "MIXERS",
    "LanguageModel",
    "Mixer",
    "ModelConfig",
    "ResidualBlock",
    "SequenceClassifier",
    "__version__",
    "build_mixer",
    "register_mixer",
]
