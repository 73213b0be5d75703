"""``ModelConfig``: everything needed to build a model, as plain data (YAML/JSON-friendly)."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_choice, check_dropout, check_positive_int


@dataclass
class ModelConfig:
    """Architecture of a :class:`LanguageModel` or :class:`SequenceClassifier`.

    Attributes:
        vocab_size: tokens in the vocabulary.
        d_model: width.
        n_layers: residual blocks.
        mixer: a registered mixer name for every layer, or a list with one name per
            layer (a hybrid, e.g. ``["s4d", "s4d", "attention"]``).
        mixer_options: options passed to every layer's mixer; a key that is a mixer
            name holds options for that mixer only (``{"attention": {"n_heads": 4}}``).
        channel_mixer: ``"glu"``, ``"mlp"``, ``"monarch"`` or ``"none"``.
        d_ff: hidden width of the channel mixer (default: 4 d, or 8/3 d for GLU).
        monarch_blocks: blocks of the ``"monarch"`` channel mixer.
        norm: ``"rmsnorm"`` or ``"layernorm"``.
        dropout: residual dropout.
        tie_embeddings: the output head shares the embedding matrix.
        causal: causal mixers (language models need it; classifiers may be bidirectional).
        max_length: longest sequence (mixers with a length limit or a KV cache get it).
        num_classes: classes of a :class:`SequenceClassifier`.
        pool: ``"mean"`` or ``"last"`` pooling of a classifier.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    mixer: str | list[str] = "attention"
    mixer_options: dict[str, Any] = field(default_factory=dict)
    channel_mixer: str = "glu"
    d_ff: int | None = None
    monarch_blocks: int = 4
    norm: str = "rmsnorm"
    dropout: float = 0.0
    tie_embeddings: bool = True
    causal: bool = True
    max_length: int = 2048
    num_classes: int | None = None
    pool: str = "mean"

    def __post_init__(self) -> None:
        # Imported here, not at the top: the config (and so `seqarch --help`) loads without torch.
        from ..mixers import MIXERS
        from ..modules.mlp import CHANNEL_MIXERS
        from ..modules.norm import NORMS

        for name in ("vocab_size", "d_model", "n_layers", "monarch_blocks", "max_length"):
            check_positive_int(name, getattr(self, name))
        if self.d_ff is not None:
            check_positive_int("d_ff", self.d_ff)
        if self.num_classes is not None:
            check_positive_int("num_classes", self.num_classes)
        names = [self.mixer] if isinstance(self.mixer, str) else list(self.mixer)
        if not isinstance(self.mixer, str) and len(names) != self.n_layers:
            raise ValueError(f"mixer: expected a list of n_layers={self.n_layers} names, got {len(names)}")
        for name in names:
            if name not in MIXERS:
                raise ValueError(f"mixer: unknown mixer {name!r}; expected one of: {', '.join(sorted(MIXERS))}")
        if not isinstance(self.mixer_options, dict):
            raise ValueError(f"mixer_options: expected a dict, got {type(self.mixer_options).__name__}")
        check_choice("channel_mixer", self.channel_mixer, CHANNEL_MIXERS)
        check_choice("norm", self.norm, NORMS)
        check_choice("pool", self.pool, ("mean", "last"))
        check_dropout(self.dropout)

    @property
    def layer_mixers(self) -> list[str]:
        """The mixer name of each layer."""
        return [self.mixer] * self.n_layers if isinstance(self.mixer, str) else list(self.mixer)

    def options_for(self, name: str) -> dict[str, Any]:
        """Constructor options of mixer ``name``: the shared options, then its own, then
        ``causal`` and (where the mixer takes it) ``max_length`` from this config."""
        from ..mixers import MIXERS

        shared = {k: v for k, v in self.mixer_options.items() if k not in MIXERS}
        own = self.mixer_options.get(name, {})
        options = {**shared, **own, "causal": self.causal}
        if "max_length" in inspect.signature(MIXERS[name].__init__).parameters:
            options.setdefault("max_length", self.max_length)
        return options

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict, naming any key that is not a field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return cls(**values)
