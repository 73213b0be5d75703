"""The transformers config of a seqarch model: model_type ``seqarch``, holding the whole
:class:`~seqarch.models.ModelConfig` (per-layer mixers, their options, the channel mixer)."""

from __future__ import annotations

from typing import Any

try:  # transformers 5 spells the base class PreTrainedConfig, 4.x PretrainedConfig
    from transformers import PreTrainedConfig as _ConfigBase
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _ConfigBase

from ..models.config import ModelConfig


class SeqarchConfig(_ConfigBase):
    """``model_config``: the :meth:`ModelConfig.to_dict` of the model (validated here, so a bad
    field is a ``ValueError`` naming it). The usual transformers names (``vocab_size``,
    ``hidden_size``, ``num_hidden_layers``) mirror it for tools that read them."""

    model_type = "seqarch"

    def __init__(self, model_config: dict[str, Any] | ModelConfig | None = None, **kwargs: Any) -> None:
        if isinstance(model_config, ModelConfig):
            model_config = model_config.to_dict()
        if model_config is not None and not isinstance(model_config, dict):
            raise ValueError(f"model_config: expected a ModelConfig or its dict, got {type(model_config).__name__}")
        built = ModelConfig.from_dict(dict(model_config or {}))
        self.model_config = built.to_dict()
        for mirrored in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings"):
            kwargs.pop(mirrored, None)
        kwargs.setdefault("tie_word_embeddings", built.tie_embeddings)
        super().__init__(**kwargs)
        self.vocab_size = built.vocab_size
        self.hidden_size = built.d_model
        self.num_hidden_layers = built.n_layers
        self.max_position_embeddings = built.max_length

    @property
    def seqarch_config(self) -> ModelConfig:
        """The :class:`ModelConfig` this config holds."""
        return ModelConfig.from_dict(dict(self.model_config))
