"""The transformers causal LM over a seqarch :class:`~seqarch.models.LanguageModel`.

``SeqarchForCausalLM(config)`` holds ``model``, the seqarch model itself (its state dict is
the training checkpoint's ``model.*``), and works with ``generate``: the prompt is read by
``prefill`` and each new token by ``step``, through :class:`SeqarchCache`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..losses import IGNORE_INDEX, token_loss
from ..models.backbone import Backbone
from ..models.config import ModelConfig
from ..models.language_model import LanguageModel
from .cache import RowGroup, SeqarchCache
from .code import AUTO_MAP, check_exportable, write_remote_code
from .configuration import SeqarchConfig

# transformers 5 names the output's cache field ``cache``, 4.x ``past_key_values``.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class BidirectionalLM(nn.Module):
    """A bidirectional trunk with an output head (``causal=False``): scores tokens, cannot generate."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.backbone.embedding.weight


def real_spans(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Per-row count of real tokens of a left-padded ``attention_mask: (batch, length)``, or None
    when no row is left-padded (no mask, all ones, or right padding, which a causal model ignores).
    Raises a ValueError for a mask whose real tokens are not one contiguous run."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch, length):
        raise ValueError(f"attention_mask: expected shape {(batch, length)} like input_ids, "
                         f"got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    counts = mask.sum(-1)
    right_padded = torch.arange(length, device=mask.device)[None, :] < counts[:, None]
    if bool((mask == right_padded).all()):
        return None
    left_padded = torch.arange(length, device=mask.device)[None, :] >= (length - counts)[:, None]
    if not bool((mask == left_padded).all()):
        raise ValueError("attention_mask: expected each row's real tokens to be one run after left padding "
                         "(zeros then ones) or before right padding; got a mask with holes")
    if bool((counts == 0).any()):
        raise ValueError("attention_mask: expected at least one real token in every row, got an all-zero row")
    return counts


class SeqarchForCausalLM(PreTrainedModel, GenerationMixin):
    """``input_ids: (batch, length)`` -> :class:`CausalLMOutputWithPast` with ``logits: (batch, kept,
    vocab_size)``; ``labels`` (same shape as ``input_ids``, ``-100`` ignored) are shifted here."""

    config_class = SeqarchConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _supports_cache_class = True
    _tied_weights_keys: ClassVar[dict[str, str]] = {"model.head.weight": "model.backbone.embedding.weight"}

    def __init__(self, config: SeqarchConfig) -> None:
        super().__init__(config)
        model_config = config.seqarch_config
        self.model = LanguageModel(model_config) if model_config.causal else BidirectionalLM(model_config)
        self.post_init()

    # seqarch modules initialise themselves; transformers' own init would overwrite them.
    def _init_weights(self, module: nn.Module) -> None:
        pass

    def init_weights(self) -> None:
        pass

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state lives in SeqarchCache, made by prepare_inputs_for_generation

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.backbone.embedding

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.head

    @property
    def seqarch_config(self) -> ModelConfig:
        return self.model.config

    # -- forward ------------------------------------------------------------------------
    def _features(self, input_ids: torch.Tensor, spans: torch.Tensor | None) -> torch.Tensor:
        """Features ``(batch, length, d_model)``; left-padded rows are run on their real tokens
        alone (the pad positions get zeros), so no recurrence reads a pad."""
        backbone = self.model.backbone
        if spans is None:
            return backbone(input_ids)
        batch, length = input_ids.shape
        out = torch.zeros(batch, length, self.model.config.d_model, device=input_ids.device,
                          dtype=backbone.embedding.weight.dtype)
        for count in torch.unique(spans).tolist():
            rows = (spans == count).nonzero().squeeze(-1)
            out[rows, length - count:] = backbone(input_ids[rows, length - count:])
        return out

    def _with_cache(self, input_ids: torch.Tensor, spans: torch.Tensor | None, cache: SeqarchCache) -> torch.Tensor:
        """Features of the tokens not yet in ``cache``: the prompt by ``prefill`` (per group of
        equal real length), later tokens by ``step``."""
        if not self.model.config.causal:
            raise ValueError("generate: this seqarch model is bidirectional (causal=False) and has no recurrent "
                             "form; expected a causal model (model_config.causal=True)")
        backbone = self.model.backbone
        batch, length = input_ids.shape
        if cache.empty:
            counts = spans if spans is not None else torch.full((batch,), length, device=input_ids.device)
            out = torch.zeros(batch, length, self.model.config.d_model, device=input_ids.device,
                              dtype=backbone.embedding.weight.dtype)
            for count in torch.unique(counts).tolist():
                rows = (counts == count).nonzero().squeeze(-1)
                states = backbone.init_state(len(rows))
                features, states = backbone.prefill(input_ids[rows, length - count:], states)
                out[rows, length - count:] = features
                cache.groups.append(RowGroup(rows, states))
            cache.seen = length
            return out
        steps = []
        for t in range(length):
            features = torch.empty(batch, self.model.config.d_model, device=input_ids.device,
                                   dtype=backbone.embedding.weight.dtype)
            for group in cache.groups:
                step_features, group.states = backbone.step(input_ids[group.rows, t], group.states)
                features[group.rows] = step_features
            steps.append(features)
        cache.seen += length
        return torch.stack(steps, dim=1)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, return_dict: bool | None = None,
                cache: SeqarchCache | None = None, past_key_values: SeqarchCache | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """``logits_to_keep``: an int k keeps the last k positions' logits (0: all), a 1-D tensor
        the positions it lists. ``cache``/``past_key_values``: a :class:`SeqarchCache` to read
        and advance (``use_cache=True`` without one starts a new one)."""
        if input_ids is None:
            raise ValueError("input_ids: expected a (batch, length) tensor of token ids, got None")
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("inputs_embeds: seqarch models take input_ids only")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, SeqarchCache):
            if cache.get_seq_length() != 0:
                raise ValueError(f"cache: expected a SeqarchCache, got a non-empty {type(cache).__name__}")
            cache = None
        if cache is None and use_cache and self.model.config.causal and labels is None:
            cache = SeqarchCache()
        batch, length = input_ids.shape
        if cache is not None and not cache.empty:
            spans = None  # later tokens: every row has a real token at each new position
        else:
            spans = real_spans(attention_mask, batch, length)
        features = self._features(input_ids, spans) if cache is None else self._with_cache(input_ids, spans, cache)
        if isinstance(logits_to_keep, int):
            kept = features[:, -logits_to_keep:] if logits_to_keep > 0 else features
        else:
            kept = features[:, logits_to_keep]
        logits = self.model.head(kept)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels: expected shape {tuple(input_ids.shape)} like input_ids, "
                                 f"got {tuple(labels.shape)}")
            if logits.shape[1] != length:
                raise ValueError("logits_to_keep: expected 0 (every position) when labels are given")
            shifted = labels[:, 1:]
            if attention_mask is not None:
                shifted = shifted.masked_fill(~attention_mask[:, 1:].bool(), IGNORE_INDEX)
            loss = token_loss(logits[:, :-1], shifted)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache})

    @classmethod
    def is_remote_code(cls) -> bool:
        return False  # save_pretrained writes its own remote code (transformers would copy module files)

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """transformers' ``save_pretrained`` (safetensors), plus the code that loads the folder
        without seqarch installed (``trust_remote_code=True``). Checks first, so a model that
        cannot be exported writes nothing."""
        check_exportable(self.model.config)
        self.config.auto_map = dict(AUTO_MAP)
        # A model loaded as remote code would have transformers copy its module files, which
        # import the vendored package relatively; the code written below replaces them.
        auto_classes = self._auto_class, getattr(self.config, "_auto_class", None)
        self._auto_class = self.config._auto_class = None
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self._auto_class, self.config._auto_class = auto_classes
        write_remote_code(save_directory)

    # -- generation ---------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict[str, Any]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if not isinstance(cache, SeqarchCache):
            cache = SeqarchCache()
        new = input_ids if cache.empty else input_ids[:, cache.seen:]
        return {"input_ids": new, "attention_mask": attention_mask, CACHE_FIELD: cache, "use_cache": True,
                "logits_to_keep": kwargs.get("logits_to_keep") or 1}

    def generate(self, *args: Any, **kwargs: Any):
        if not self.model.config.causal:
            raise ValueError("generate: this seqarch model is bidirectional (causal=False) and has no recurrent "
                             "form; expected a causal model (model_config.causal=True)")
        if (kwargs.get("num_beams") or 1) > 1:
            raise ValueError(f"num_beams: seqarch models decode greedily or by sampling; expected 1, "
                             f"got {kwargs['num_beams']}")
        return super().generate(*args, **kwargs)
