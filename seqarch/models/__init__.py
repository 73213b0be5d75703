"""Models built from a :class:`ModelConfig` (names load on first use; see :mod:`seqarch.lazy`)."""

from ..lazy import lazy_exports

_EXPORTS = {
    "SequenceAutoencoder": ".autoencoder", "ResidualBlock": ".block", "SequenceClassifier": ".classifier",
    "ModelConfig": ".config",
    "LanguageModel": ".language_model", "PRESETS": ".presets", "Preset": ".presets", "all_presets": ".presets",
    "build_preset": ".presets", "register_preset": ".presets",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = list(_EXPORTS)
