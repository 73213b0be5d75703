"""Run configuration: the YAML a researcher writes, validated before anything runs.

A run config has these sections (every key has a default, see ``DEFAULTS``)::

    name: mqar                      # names the output folder
    data: {task: mqar, ...}         # seqarch.data.build_data spec
    model: {d_model: 64, mixer: attention, ...}   # ModelConfig fields
    architectures: [attention, s4d, {name: s4d-4l, mixer: s4d, n_layers: 4}]  # compare only
    budget: {params: 2.0e5}         # or {flops: 1.0e13} for the whole run; match_by: width|depth
    train: {steps: 500, batch_size: 64, lr: 1.0e-3, ...}
    trainer: {accelerator: auto, devices: 1, strategy: auto, num_nodes: 1}
    logger: csv                     # or wandb (offline when there are no credentials)
    output: runs                    # parent folder of the run folder

Overrides on the command line use dotted keys: ``train.steps=100 model.d_model=128``;
values are parsed as YAML (``train.lr=[1e-3,3e-3]`` is a list).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from ..models import ModelConfig

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 500,
    "batch_size": 64,
    "lr": 1e-3,  # a list is a learning-rate sweep: every value is trained, the best is kept
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "warmup_steps": 50,
    "min_lr_ratio": 0.1,  # cosine decay ends at lr * min_lr_ratio
    "grad_clip": 1.0,
    "seed": 0,
    "eval_every": 100,
    "eval_batches": None,  # None: the whole validation set
    "log_every": 10,
    "checkpoint_every": 200,
    "keep_checkpoints": 2,
    "precision": "auto",  # auto: bf16-mixed on GPUs, 32 on CPUs
    "compile": False,
    "stop_at": None,  # stop early when the validation metric reaches this value (Zoology: 0.99)
    "num_workers": 0,
}

TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1, "enable_progress_bar": True,
}

WANDB_DEFAULTS: dict[str, Any] = {"project": "seqarch", "entity": None, "mode": "auto"}

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "data": {"task": "mqar"},
    "model": {},
    "architectures": [],
    "budget": {},
    "train": TRAIN_DEFAULTS,
    "trainer": TRAINER_DEFAULTS,
    "logger": "csv",
    "wandb": WANDB_DEFAULTS,
    "output": "runs",
    "sweep": {},
}

SWEEP_KEYS = ("data", "d_model")

# Filled from the data, never from the config's model section.
DATA_OWNED_MODEL_KEYS = ("vocab_size", "num_classes")
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
BUDGET_KEYS = ("params", "flops", "match_by")
LOGGERS = ("csv", "wandb")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; researchers write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """``yaml.safe_load`` that also reads ``1e-3`` as a float."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A run config that cannot run; the message names the key."""


def _check_keys(section: str, values: dict, allowed) -> None:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ConfigError(f"{section}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")


def _merge(defaults: dict, values: dict) -> dict:
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and merged[key]:
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict copy."""
    values = copy.deepcopy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override: expected KEY=VALUE (e.g. train.steps=100), got {item!r}")
        target = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part!r} is not a section")
            target = node
        target[parts[-1]] = parse_yaml(raw)
    return values


def _positive(section: str, key: str, value: Any, *, allow_none: bool = False, number=int) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if number is int:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if number is int else "a positive number"
        raise ConfigError(f"{section}.{key}: expected {kind}, got {value!r}")


def _check_train(train: dict) -> None:
    _check_keys("train", train, TRAIN_DEFAULTS)
    for key in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
        _positive("train", key, train[key])
    _positive("train", "eval_batches", train["eval_batches"], allow_none=True)
    lrs = train["lr"] if isinstance(train["lr"], list) else [train["lr"]]
    if not lrs:
        raise ConfigError("train.lr: expected a positive number or a non-empty list of them, got []")
    for lr in lrs:
        _positive("train", "lr", lr, number=float)
    if not (isinstance(train["weight_decay"], (int, float)) and train["weight_decay"] >= 0):
        raise ConfigError(f"train.weight_decay: expected a number >= 0, got {train['weight_decay']!r}")
    if not (isinstance(train["warmup_steps"], int) and train["warmup_steps"] >= 0):
        raise ConfigError(f"train.warmup_steps: expected an integer >= 0, got {train['warmup_steps']!r}")
    if not (isinstance(train["min_lr_ratio"], (int, float)) and 0 <= train["min_lr_ratio"] <= 1):
        raise ConfigError(f"train.min_lr_ratio: expected a number in [0, 1], got {train['min_lr_ratio']!r}")
    if train["precision"] not in ("auto", "32", 32, "bf16-mixed", "16-mixed", "64", 64):
        raise ConfigError(f"train.precision: expected auto, 32, 64, bf16-mixed or 16-mixed, got {train['precision']!r}")
    _positive("train", "grad_clip", train["grad_clip"], allow_none=True, number=float)


def _check_sweep(config: dict) -> None:
    sweep = config["sweep"]
    if not isinstance(sweep, dict):
        raise ConfigError(f"sweep: expected a mapping with 'data' and/or 'd_model' lists, got {sweep!r}")
    _check_keys("sweep", sweep, SWEEP_KEYS)
    for key in SWEEP_KEYS:
        if key in sweep and (not isinstance(sweep[key], list) or not sweep[key]):
            raise ConfigError(f"sweep.{key}: expected a non-empty list, got {sweep[key]!r}")
    for i, point in enumerate(sweep.get("data", [])):
        if not isinstance(point, dict):
            raise ConfigError(f"sweep.data[{i}]: expected a mapping of data keys, got {point!r}")
    for width in sweep.get("d_model", []):
        _positive("sweep", "d_model", width)
    if "d_model" in sweep and ("params" in config["budget"] or "flops" in config["budget"]):
        raise ConfigError("sweep.d_model: a width sweep sets each model's size; expected no budget, got "
                          f"budget {config['budget']}")


def sweep_points(config: dict) -> list[tuple[str, dict]]:
    """The configs of a sweep, ``(label, config)`` per data point; every architecture is
    repeated per swept width (named ``<name>-d<width>``). No sweep: ``[("", config)]``."""
    sweep = config["sweep"]
    if not sweep:
        return [("", config)]
    points = []
    for data in sweep.get("data", [{}]):
        variant = copy.deepcopy(config)
        variant["data"] = {**config["data"], **data}
        variant["sweep"] = {}
        if "d_model" in sweep:
            variant["architectures"] = [
                {**entry, "name": f"{entry['name']}-d{width}", "d_model": width}
                for entry in architecture_entries(config) for width in sweep["d_model"]
            ]
        label = "-".join(f"{k}{v}" for k, v in data.items())
        points.append((label, variant))
    return points


def architecture_entries(config: dict) -> list[dict]:
    """The ``architectures`` list as dicts ``{name, <ModelConfig overrides>}``; a bare string is a mixer name."""
    entries = []
    for i, item in enumerate(config["architectures"]):
        if isinstance(item, str):
            item = {"name": item, "mixer": item}
        if not isinstance(item, dict):
            raise ConfigError(f"architectures[{i}]: expected a mixer name or a mapping, got {item!r}")
        item = dict(item)
        name = item.pop("name", None) or item.get("mixer")
        if not name:
            raise ConfigError(f"architectures[{i}]: expected a 'name' or a 'mixer', got {item!r}")
        _check_keys(f"architectures[{i}]", item, set(MODEL_KEYS) - set(DATA_OWNED_MODEL_KEYS))
        entries.append({"name": str(name), **item})
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"architectures: expected distinct names, got {names}")
    return entries


def validate(config: dict, *, command: str = "train") -> dict:
    """Fill defaults and check every section; returns the full config. Raises :class:`ConfigError`."""
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(config).__name__}")
    _check_keys("config", config, DEFAULTS)
    config = _merge(DEFAULTS, config)
    if not isinstance(config["data"], dict) or "task" not in config["data"]:
        raise ConfigError(f"data: expected a mapping with a 'task', got {config['data']!r}")
    if not isinstance(config["model"], dict):
        raise ConfigError(f"model: expected a mapping of ModelConfig fields, got {config['model']!r}")
    _check_keys("model", config["model"], set(MODEL_KEYS) - set(DATA_OWNED_MODEL_KEYS))
    _check_train(config["train"])
    _check_keys("trainer", config["trainer"], TRAINER_DEFAULTS)
    _check_keys("budget", config["budget"], BUDGET_KEYS)
    _check_keys("wandb", config["wandb"], WANDB_DEFAULTS)
    budget = config["budget"]
    if "params" in budget and "flops" in budget:
        raise ConfigError("budget: expected one of 'params' or 'flops', got both")
    for key in ("params", "flops"):
        if key in budget:
            _positive("budget", key, budget[key], number=float)
    if budget.get("match_by", "width") not in ("width", "depth"):
        raise ConfigError(f"budget.match_by: expected 'width' or 'depth', got {budget['match_by']!r}")
    if config["logger"] not in LOGGERS:
        raise ConfigError(f"logger: expected one of {', '.join(LOGGERS)}, got {config['logger']!r}")
    _check_sweep(config)
    if command == "compare" and not config["architectures"]:
        raise ConfigError("architectures: expected at least one architecture to compare, got none")
    architecture_entries(config)
    return config


def load_config(path: str | Path | None, overrides: list[str] = (), *, command: str = "train") -> dict:
    """Read a YAML config (``None``: the embedded MQAR default), apply overrides, validate."""
    if path is None:
        from .defaults import default_config

        raw = default_config()
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such file: {str(path)!r}")
        raw = parse_yaml(path.read_text()) or {}
    return validate(apply_overrides(raw, list(overrides)), command=command)
