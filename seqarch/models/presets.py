"""Architectures by name: a preset is a mixer plus the channel mixer and options its paper pairs it with.

A mixer name says only which sequence mixer every layer runs; an architecture is more
(the Monarch Mixer of the paper is the M2 sequence mixer *and* the block-diagonal
Monarch MLP). Presets name architectures, so a comparison lists ``m2`` and gets the
paper's model, not the M2 mixer with whatever channel mixer the config's model
section happens to say.

>>> from seqarch.models.presets import build_preset
>>> config = build_preset("m2", d_model=64)      # Monarch Mixer: channel_mixer "monarch"
>>> register_preset("s4d-4l", "S4D, four layers", mixer="s4d", n_layers=4)

Each family declares its presets on its mixer class (``Mixer.presets``); ``seqarch architectures``
lists them, one line each.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_str
from ..mixers.base import MIXERS
from .config import ModelConfig

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


@dataclass(frozen=True)
class Preset:
    """A named architecture: ``fields`` are :class:`ModelConfig` fields, applied over a base config."""

    name: str
    description: str
    fields: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, **fields: Any) -> Preset:
    """Name an architecture. ``fields`` are :class:`ModelConfig` fields (``mixer`` is required);
    registering a name twice with other fields is an error, the same fields again is a no-op."""
    check_str("name", name)
    check_str("description", description)
    unknown = sorted(set(fields) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"register_preset({name!r}): unknown ModelConfig field(s) {unknown}; "
                         f"expected some of {', '.join(MODEL_FIELDS)}")
    if "mixer" not in fields:
        raise ValueError(f"register_preset({name!r}): expected a 'mixer' field, got {sorted(fields)}")
    ModelConfig(**fields)  # bad values fail here, at registration, not in the middle of a comparison
    preset = Preset(name, description, dict(fields))
    if name in PRESETS and PRESETS[name] != preset:
        raise ValueError(f"preset name {name!r} is already registered ({PRESETS[name].description})")
    PRESETS[name] = preset
    return preset


def all_presets() -> dict[str, Preset]:
    """Every preset: those registered with :func:`register_preset` and those the registered mixers
    declare in their ``presets`` class attribute (a mixer imported later, e.g. by ``--import``,
    brings its presets along)."""
    for mixer_name, cls in list(MIXERS.items()):
        for name, declared in cls.presets.items():
            if name not in PRESETS:
                fields = {k: v for k, v in declared.items() if k != "description"}
                fields.setdefault("mixer", mixer_name)
                register_preset(name, declared.get("description", cls.__name__), **fields)
    return PRESETS


def preset_fields(name: str) -> dict[str, Any]:
    """The ModelConfig fields of preset ``name`` (a copy)."""
    if name not in all_presets():
        raise ValueError(f"preset: unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name].fields)


def merge_model_fields(*layers: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig fields of ``layers``, later ones winning; ``mixer_options`` are merged key by key
    (and a mixer's own options dict by option), so a preset's options keep the model section's."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "mixer_options" and isinstance(value, dict) and isinstance(merged.get(key), dict):
                options = dict(merged[key])
                for option, setting in value.items():
                    both = isinstance(setting, dict) and isinstance(options.get(option), dict)
                    options[option] = {**options[option], **setting} if both else setting
                value = options
            merged[key] = copy.deepcopy(value)
    return merged


def build_preset(name: str, base: dict[str, Any] | None = None, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name``: ``base`` fields (e.g. a run's shared model
    section: width, depth, vocabulary), then the preset's fields, then ``overrides``."""
    return ModelConfig.from_dict(merge_model_fields(base or {}, preset_fields(name), overrides))


all_presets()  # the built-in families' presets, so PRESETS is complete from the first import
