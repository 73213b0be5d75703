"""seqarch: alternative sequence architectures behind one layer contract.

>>> import seqarch
>>> mixer = seqarch.build_mixer("s4d", 64)

The names below load on first use, so ``import seqarch`` (and the ``seqarch`` command's
``--help``) does not import torch.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "MIXERS": ".mixers", "Mixer": ".mixers", "build_mixer": ".mixers", "register_mixer": ".mixers",
    "LanguageModel": ".models", "ModelConfig": ".models", "ResidualBlock": ".models", "SequenceClassifier": ".models",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["MIXERS", "LanguageModel", "Mixer", "ModelConfig", "ResidualBlock", "SequenceClassifier", "__version__",
           "build_mixer", "register_mixer"]
