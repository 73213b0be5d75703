"""Models built from a :class:`ModelConfig`."""

from .block import ResidualBlock
from .classifier import SequenceClassifier
from .config import ModelConfig
from .language_model import LanguageModel

__all__ = ["LanguageModel", "ModelConfig", "ResidualBlock", "SequenceClassifier"]
