"""Models built from a :class:`ModelConfig`."""

from .autoencoder import SequenceAutoencoder
from .block import ResidualBlock
from .classifier import SequenceClassifier
from .config import ModelConfig
from .language_model import LanguageModel
from .presets import PRESETS, Preset, all_presets, build_preset, register_preset

__all__ = ["PRESETS", "LanguageModel", "ModelConfig", "Preset", "ResidualBlock", "SequenceAutoencoder",
           "SequenceClassifier", "all_presets", "build_preset", "register_preset"]
