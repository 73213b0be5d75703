"""Run configuration: the YAML a researcher writes, as typed models validated before anything runs.

A run config has these sections (every key has a default; ``seqarch schema`` prints them all)::

    name: mqar                      # names the output folder
    data: {task: mqar, ...}         # seqarch.data.build_data spec; synthetic tasks draw fresh training
                                    # examples every step unless num_train: N asks for a finite set
    model: {d_model: 64, mixer: attention, ...}   # ModelConfig fields shared by every architecture
    architectures: [transformer, m2, {name: s4d-4l, preset: s4d, n_layers: 4}]  # compare only
    budget: {params: 2.0e5}         # or {flops: 1.0e13} for the whole run; match_by: width|depth
    train: {steps: 500, batch_size: 64, lr: 1.0e-3, ...}   # seeds: [0, 1, 2] for mean +- 95% intervals
    trainer: {accelerator: auto, devices: 1, strategy: auto, num_nodes: 1}
    logger: csv                     # or wandb (offline when there are no credentials)
    output: runs                    # parent folder of the run folder
    sweep: {data: [...], d_model: [...]}
    imports: [my_layers]            # modules that register a researcher's own mixers or presets
    mad: {variants: all}            # seqarch mad: MAD tasks and variants
    scale: {flops_min: 1e11, flops_max: 1e13, points: 5}   # seqarch scale: the FLOP grid

Overrides on the command line use dotted keys: ``train.steps=100 model.d_model=128``;
values are parsed as YAML (``train.lr=[1e-3,3e-3]`` is a list). Errors name the key path
(``train.steps: expected a positive integer, got 0``).
"""

from __future__ import annotations

import copy
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

from ..checks import check_positive_int, check_positive_real
from ..models import ModelConfig
from .errors import ConfigError, format_validation_error, nested
from .plugins import import_modules


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; researchers write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "config"):
    """``yaml.safe_load`` that also reads ``1e-3`` as a float; a syntax error is a :class:`ConfigError`
    naming ``where`` (the file or the override) and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        raise ConfigError(f"{where}: expected valid YAML, got a syntax error at{at} {problem}"
                          f"{f' ({context})' if context else ''}") from None


# -- value types: the shared validators of seqarch.checks, named by the key path in the error ------------
# The checks name their argument "value"; errors.format_validation_error replaces it by the key path.
def _positive_int(value: Any) -> int:
    # 1e3 (a float in YAML) is a fine step count; 2.5 and True are not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return check_positive_int("value", value)


def _positive_real(value: Any) -> float:
    return check_positive_real("value", value)


def _learning_rates(value: Any) -> float | list[float]:
    if isinstance(value, list):
        if not value:
            raise ValueError("value: expected a positive number or a non-empty list of them, got []")
        return [_positive_real(v) for v in value]
    return _positive_real(value)


def _precision(value: Any) -> str:
    return str(value)  # 32 and "32" are the same precision


PositiveInt = Annotated[int, BeforeValidator(_positive_int), Field(gt=0)]
PositiveReal = Annotated[float, BeforeValidator(_positive_real), Field(gt=0)]


class Section(BaseModel):
    """A config section: unknown keys are errors that list the known ones."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r}; expected one of {', '.join(sorted(cls.model_fields))}")
        return values


class DataSection(BaseModel):
    """The ``data:`` spec of :func:`seqarch.data.build_data`; its own keys are checked there, per task."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    task: str
    """the task: mqar, selective_copy, induction, text, listops or a MAD task (mad_in_context_recall, ...).
    For mqar, selective_copy and induction:
    num_train null (the default) draws fresh training examples every step, never repeated; an integer is a
    finite training set of that many (read in epochs: a model can memorise it); num_test sizes the held-out
    test split (the reported result) and num_val the validation split (null: as many as num_test);
    test_lengths (a list of sequence lengths, default none) adds a held-out test set of num_test examples at
    each length, on which the final model is also tested (length generalisation; the report's table and
    length_generalisation.png)"""

    def spec(self) -> dict[str, Any]:
        """The spec as a plain dict."""
        return self.model_dump()


# -- the model section: generated from ModelConfig's fields, so the two never drift apart ----------------
DATA_OWNED_MODEL_KEYS = ("vocab_size", "num_classes")  # filled from the data, never from the config


def _field_docs(cls: type) -> dict[str, str]:
    """``name: text`` lines of a Google-style ``Attributes:`` docstring section."""
    docs, current = {}, None
    for line in (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs


def _model_section_fields() -> dict[str, Any]:
    """``name: (type | None, Field)`` of every ModelConfig field the config may set, documented by its docstring."""
    hints, docs = typing.get_type_hints(ModelConfig), _field_docs(ModelConfig)
    return {name: (hints[name] | None, Field(default=None, description=docs.get(name)))
            for name in hints if name not in DATA_OWNED_MODEL_KEYS}


class ModelOverrides(Section):
    """:class:`ModelConfig` fields; only the keys given count (``overrides()``)."""

    def overrides(self) -> dict[str, Any]:
        """The ModelConfig fields this section sets."""
        return self.model_dump(include=self.model_fields_set & set(MODEL_SECTION_KEYS))


_MODEL_FIELDS = _model_section_fields()
MODEL_SECTION_KEYS = tuple(_MODEL_FIELDS)
ModelSection = create_model(
    "ModelSection", __base__=ModelOverrides, __module__=__name__,
    __doc__="The ModelConfig fields every architecture shares (all but vocab_size and num_classes).",
    **_MODEL_FIELDS,
)


class Architecture(ModelSection):
    """One architecture of a comparison: a preset or a registered mixer, with ModelConfig overrides.

    A bare name is a preset where one has that name (presets win over a mixer of the same
    name), else a registered mixer run with the config's model section.
    """

    name: str | None = None
    """the label of the architecture in results and the name of its run folder"""
    preset: str | None = None
    """a preset of seqarch.models.presets (seqarch architectures lists them)"""

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if not isinstance(value, dict):
            raise ValueError(f"expected an architecture name (a preset or a mixer) or a mapping, got {value!r}")
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Architecture:
        # Imported on use: the config models (and `seqarch --help`) load without torch.
        from ..mixers import MIXERS
        from ..models.presets import all_presets

        if self.preset is None and self.mixer is None:
            if self.name is None:
                raise ValueError("expected a 'name', a 'preset' or a 'mixer', got none of them")
            if self.name in all_presets():
                self.preset = self.name
            elif self.name in MIXERS:
                self.mixer = self.name
            else:
                raise ValueError(f"unknown mixer {self.name!r}; "
                                 f"expected a preset ({', '.join(sorted(all_presets()))}) or "
                                 f"a registered mixer ({', '.join(sorted(MIXERS))}); a module that registers "
                                 "your own is named by --import or the config's imports")
        if self.preset is not None and self.preset not in all_presets():
            raise ValueError(f"preset: unknown preset {self.preset!r}; "
                             f"expected one of {', '.join(sorted(all_presets()))}")
        if self.name is None:
            if self.preset is None and not isinstance(self.mixer, str):
                raise ValueError(f"expected a 'name' for a hybrid of mixers {self.mixer}, got none")
            self.name = self.preset or self.mixer
        return self

    def model_fields_over(self, base: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields of this architecture: ``base`` (the model section), the preset's, then its own."""
        from ..models.presets import merge_model_fields, preset_fields

        return merge_model_fields(base, preset_fields(self.preset) if self.preset else {}, self.overrides())

    def to_dict(self) -> dict[str, Any]:
        """The entry as a config would write it: name, preset where there is one, the overrides."""
        return {"name": self.name, **({"preset": self.preset} if self.preset else {}), **self.overrides()}

    def renamed(self, name: str, **changes: Any) -> Architecture:
        """A copy called ``name`` with ModelConfig ``changes``."""
        values = {**self.overrides(), "name": name, "preset": self.preset, **changes}
        return Architecture.model_validate(values)


# -- the other sections ----------------------------------------------------------------------------------
class BudgetSection(Section):
    """What every compared architecture is resized to; none of params and flops: each at its own size."""

    params: PositiveReal | None = None
    """parameters of every model"""
    flops: PositiveReal | None = None
    """training FLOPs of the whole run: steps x the forward + backward FLOPs of a (batch, length) step"""
    match_by: Literal["width", "depth"] = "width"
    """what the solver resizes"""
    params_count: Literal["total", "non_embedding"] = "total"
    """which parameters params counts: all, or all but the token embedding (and an untied head)"""
    attention_flops: Literal["causal", "dense"] = "causal"
    """attention's FLOP convention: causal (the score pairs the kernels compute) or dense (every pair)"""
    width_multiple: PositiveInt = 8
    """widths the solver tries are multiples of this (smaller: finer steps for small models, e.g. 4)"""

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetSection:
        if self.params is not None and self.flops is not None:
            raise ValueError("expected one of 'params' or 'flops', got both")
        return self

    @property
    def is_set(self) -> bool:
        return self.params is not None or self.flops is not None


class TrainSection(Section):
    """The optimiser recipe and the run's length, the same for every architecture."""

    steps: PositiveInt = 500
    """optimiser steps"""
    batch_size: PositiveInt = 64
    """sequences per step (all ranks together)"""
    lr: Annotated[float | list[float], BeforeValidator(_learning_rates)] = 1e-3
    """peak learning rate; a list is a sweep: every value is trained, the best run is kept"""
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    """AdamW weight decay (norms, biases, embeddings and the layers' own hints excepted)"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas"""
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    """linear warmup steps"""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """the cosine decay ends at lr x min_lr_ratio"""
    grad_clip: PositiveReal | None = 1.0
    """gradient norm clip; null: none"""
    seed: Annotated[int, Field(ge=0)] = 0
    """fixes initialisation, data and batch order (the validation and test splits come from it too)"""
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    """compare: train every architecture (and learning rate) once per seed, e.g. [0, 1, 2]; the report gives
    mean +- 95% Student-t interval over seeds. null: train.seed alone. Seeds change initialisation, the fresh
    training examples (a finite set: its order); validation and test splits stay those of train.seed"""
    eval_every: PositiveInt = 100
    """steps between validations"""
    eval_batches: PositiveInt | None = 8
    """batches per validation (of the validation split and, beside it, of examples trained on); null: the
    whole validation split. The test split, evaluated once at the end, is always read whole"""
    log_every: PositiveInt = 10
    """steps between logged training metrics"""
    checkpoint_every: PositiveInt = 200
    """steps between checkpoints (one is also written at the end)"""
    keep_checkpoints: PositiveInt = 2
    """newest checkpoints kept"""
    precision: Annotated[Literal["auto", "32", "64", "bf16-mixed", "16-mixed"], BeforeValidator(_precision)] = "auto"
    """auto: bf16-mixed on GPUs, 32 on CPUs"""
    compile: bool = False
    """torch.compile the model"""
    stop_at: float | None = None
    """stop early when the task's validation metric reaches this value (Zoology: 0.99 accuracy)"""
    num_workers: Annotated[int, Field(ge=0)] = 0
    """data loader worker processes"""

    @model_validator(mode="after")
    def _distinct(self) -> TrainSection:
        # Run folders are named lr-<lr:g> and seed-<seed>: two runs must never share one.
        labels = [f"{lr:g}" for lr in self.learning_rates]
        if len(set(labels)) != len(labels):
            raise ValueError(f"lr: expected learning rates that differ at 6 significant digits (each names a run "
                             f"folder), got {labels}")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct seeds, got {self.seeds}")
        return self

    @property
    def learning_rates(self) -> list[float]:
        """The learning rates to train: ``lr`` as a list."""
        return list(self.lr) if isinstance(self.lr, list) else [self.lr]

    @property
    def run_seeds(self) -> list[int]:
        """The seeds to train: ``seeds``, else ``[seed]``."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_seed(self, seed: int) -> TrainSection:
        """This recipe for one run of ``seed`` (``seeds`` cleared, so a run's fingerprint is its own seed's)."""
        return self.model_copy(update={"seed": seed, "seeds": None})


class TrainerSection(Section):
    """Where Lightning trains: passed to ``lightning.Trainer``."""

    accelerator: str = "auto"
    """cpu, gpu, auto, ..."""
    devices: int | str | list[int] = 1
    """devices per node"""
    strategy: str = "auto"
    """auto, ddp, ..."""
    num_nodes: PositiveInt = 1
    """machines"""
    enable_progress_bar: bool = True
    """the progress bar (--quiet turns it off)"""


class WandbSection(Section):
    """Options of the wandb logger."""

    project: str = "seqarch"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online with credentials, else offline"""


class SlurmSection(Section):
    """Scheduler options of ``seqarch compare --launcher slurm`` (the command line's win over them)."""

    partition: str | None = None
    """SLURM partition"""
    gpus: PositiveInt | None = None
    """GPUs per node"""
    time: PositiveInt = 60
    """time limit per job, minutes"""
    account: str | None = None
    """SLURM account"""
    extra: dict[str, Any] = {}
    """further submitit SLURM parameters by their submitit names, e.g. {qos: high, constraint: a100, mem: 64G}
    (--slurm-option KEY=VALUE adds or overrides one)"""


class SweepSection(Section):
    """A grid of comparisons: every data point, and every architecture at every width."""

    data: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    """data keys per point, each merged over the data section (one comparison per point)"""
    d_model: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    """widths: every architecture is trained at each, named <name>-d<width>"""

    @property
    def is_set(self) -> bool:
        return self.data is not None or self.d_model is not None


def _mad_tasks() -> tuple[str, ...]:
    # Imported on use: the MAD generators need torch, the config models (and `seqarch --help`) do not.
    from ..data.mad import MAD_TASKS

    return MAD_TASKS


class MadSection(Section):
    """The MAD suite of ``seqarch mad`` (Poli et al., 2024): every architecture on each task's variants."""

    tasks: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: list(_mad_tasks()))
    """MAD tasks (default: all six)"""
    variants: Literal["all", "baseline"] = "all"
    """all: MAD's baseline and every change of it; baseline: the baseline setting only"""
    num_test: PositiveInt | None = None
    """validation examples of every variant (null: MAD's 1280)"""
    max_seq_len: PositiveInt | None = None
    """leave out the variants longer than this (null: none left out); the report names them"""

    @model_validator(mode="after")
    def _known_tasks(self) -> MadSection:
        unknown = [t for t in self.tasks if t not in _mad_tasks()]
        if unknown:
            raise ValueError(f"tasks: expected MAD tasks ({', '.join(_mad_tasks())}), got {unknown[0]!r}")
        return self


class ScaleSection(Section):
    """The FLOP grid of ``seqarch scale``: ``flops``, or ``points`` budgets from ``flops_min`` to ``flops_max``."""

    flops: list[PositiveReal] | None = None
    """training-FLOP budgets of the whole run, listed"""
    flops_min: PositiveReal | None = None
    """the smallest budget of a geometric grid"""
    flops_max: PositiveReal | None = None
    """the largest budget of a geometric grid"""
    points: Annotated[int, Field(ge=2)] = 5
    """budgets in the geometric grid, ends included"""
    reference: str | None = None
    """the architecture whose curve the others are crossed with (default: transformer, else the first)"""

    @model_validator(mode="after")
    def _one_grid(self) -> ScaleSection:
        ends = (self.flops_min, self.flops_max)
        if self.flops is not None and len(set(self.flops)) < 2:
            raise ValueError(f"flops: expected at least two distinct budgets, got {self.flops}")
        if self.flops is not None and any(e is not None for e in ends):
            raise ValueError("expected either 'flops' or 'flops_min' and 'flops_max', got both")
        if self.flops is None and (None in ends) != (ends == (None, None)):
            raise ValueError(f"expected both 'flops_min' and 'flops_max', got {ends}")
        if self.flops_min is not None and not self.flops_min < self.flops_max:
            raise ValueError(f"flops_max: expected more than flops_min {self.flops_min:g}, got {self.flops_max:g}")
        return self

    @property
    def is_set(self) -> bool:
        return self.flops is not None or self.flops_min is not None

    @property
    def grid(self) -> list[float]:
        """The budgets, in increasing order."""
        if self.flops is not None:
            return sorted(self.flops)
        ratio = (self.flops_max / self.flops_min) ** (1 / (self.points - 1))
        return [self.flops_min * ratio ** i for i in range(self.points)]


class RunConfig(Section):
    """A ``seqarch train`` / ``seqarch compare`` run."""

    name: str = "run"
    """names the run folder under output"""
    data: DataSection = Field(default_factory=lambda: DataSection(task="mqar"))
    """the task and its options (seqarch.data.build_data)"""
    model: ModelSection = Field(default_factory=ModelSection)
    """ModelConfig fields every architecture shares"""
    architectures: list[Architecture] = Field(default_factory=list)
    """presets or mixer names, or mappings {name, preset or mixer, ModelConfig overrides} (compare only)"""
    budget: BudgetSection = Field(default_factory=BudgetSection)
    """the matched budget: params or training flops"""
    train: TrainSection = Field(default_factory=TrainSection)
    """the optimiser recipe"""
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    """Lightning's devices and strategy"""
    logger: str = "csv"
    """csv, or wandb (offline without credentials)"""
    wandb: WandbSection = Field(default_factory=WandbSection)
    """wandb options"""
    output: str = "runs"
    """parent folder of the run folder"""
    sweep: SweepSection = Field(default_factory=SweepSection)
    """data points and widths to compare over"""
    imports: list[str] = Field(default_factory=list)
    """modules to import first: they register a researcher's own mixers or presets"""
    slurm: SlurmSection = Field(default_factory=SlurmSection)
    """scheduler options of --launcher slurm"""
    mad: MadSection = Field(default_factory=MadSection)
    """the MAD suite of seqarch mad: tasks and variants"""
    scale: ScaleSection = Field(default_factory=ScaleSection)
    """the FLOP grid of seqarch scale"""

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> RunConfig:
        if self.logger not in LOGGERS:
            raise ValueError(f"logger: expected one of {', '.join(LOGGERS)}, got {self.logger!r}")
        if self.sweep.d_model is not None and self.budget.is_set:
            raise ValueError("sweep.d_model: a width sweep sets each model's size; expected no budget, got budget "
                             f"{self.budget.model_dump(exclude_defaults=True)}")
        names = [a.name for a in self.architectures]
        if len(set(names)) != len(names):
            raise ValueError(f"architectures: expected distinct names, got {names}")
        if (info.context or {}).get("command") == "compare" and not self.architectures:
            raise ValueError("architectures: expected at least one architecture to compare, got none")
        base = self.model.overrides()
        try:
            ModelConfig.from_dict(base)
        except ValueError as error:
            raise ValueError(nested("model", error)) from error
        for i, architecture in enumerate(self.architectures):
            try:
                ModelConfig.from_dict(architecture.model_fields_over(base))
            except ValueError as error:
                raise ValueError(nested(f"architectures[{i}]", error)) from error
        return self

    @property
    def folder(self) -> Path:
        """The run folder of ``seqarch compare``: ``output/name``."""
        return folder_of(self.output, self.name, "compare")

    def folder_for(self, command: str) -> Path:
        """The run folder of ``command``: ``output/name-train`` for train, ``output/name`` for the others."""
        return folder_of(self.output, self.name, command)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON) that validates back to this config: every default filled in, but the
        model section and architectures hold only the fields they set (ModelConfig fills the rest)."""
        values = self.model_dump(mode="json")
        values["model"] = self.model.overrides()
        values["architectures"] = [a.to_dict() for a in self.architectures]
        return values


def folder_of(output: str, name: str, command: str) -> Path:
    """``output/name-train`` for train, ``output/name`` for compare, mad and scale (the folder records which
    made it, and a resume by another is refused): train and compare never share a folder."""
    return Path(output) / (f"{name}-train" if command == "train" else name)


LOGGERS = ("csv", "wandb")
SECTIONS = tuple(RunConfig.model_fields)


def validate(config: Any, *, command: str = "train") -> RunConfig:
    """Check every section and fill the defaults. Raises :class:`ConfigError` naming each bad key path."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(config).__name__}")
    try:
        return RunConfig.model_validate(config, context={"command": command})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


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
        target[parts[-1]] = parse_yaml(raw, f"override {item!r}")
    return values


SAVED_CONFIG = "config.yaml"  # the resolved config a run writes into its folder; --resume reads its imports


def experiments_folder() -> Path:
    """The shipped experiment configs (``experiments/*.yaml``, installed as ``seqarch.experiments``)."""
    import importlib.resources

    return Path(str(importlib.resources.files("seqarch.experiments")))


def shipped_experiments() -> list[str]:
    """Names of the shipped experiments, usable as ``seqarch compare NAME``."""
    return sorted(p.stem for p in experiments_folder().glob("*.yaml"))


def read_config_file(path: str | Path) -> dict:
    """The raw mapping of a YAML config file, or of a shipped experiment named without ``.yaml``."""
    path = Path(path)
    if not path.is_file():
        shipped = experiments_folder() / f"{path}.yaml"
        if path.suffix or len(path.parts) != 1 or not shipped.is_file():
            raise ConfigError(f"config: no such file: {str(path)!r}; expected a YAML file or a shipped experiment "
                              f"({', '.join(shipped_experiments())})")
        path = shipped
    raw = parse_yaml(path.read_text(), f"config {str(path)!r}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections in {str(path)!r}, got {type(raw).__name__}")
    return raw


def _imports_of(raw: dict, where: str) -> list[str]:
    imports = raw.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(m, str) and m for m in imports):
        raise ConfigError(f"{where}imports: expected a list of module names, got {imports!r}")
    return imports


def saved_imports(folder: Path) -> list[str]:
    """The imports of the config a run saved in ``folder`` (none when it saved none)."""
    saved = folder / SAVED_CONFIG
    if not saved.is_file():
        return []
    return _imports_of(parse_yaml(saved.read_text()) or {}, f"{saved}: ")


def load_config(path: str | Path | None, overrides: list[str] = (), *, command: str = "train",
                imports: list[str] = (), resume: bool = False) -> RunConfig:
    """Read a YAML config (``None``: the embedded MQAR default), apply overrides, import the modules
    the run needs (``imports``, the config's own, and on ``resume`` those the run saved), validate."""
    if path is None:
        from .defaults import default_config

        raw = default_config()
    else:
        raw = read_config_file(path)
    raw = apply_overrides(raw, list(overrides))
    modules = _imports_of(raw, "") + list(imports)
    if resume:
        defaults = RunConfig.model_fields
        folder = folder_of(str(raw.get("output", defaults["output"].default)),
                           str(raw.get("name", defaults["name"].default)), command)
        modules += saved_imports(folder)
    raw["imports"] = list(dict.fromkeys(modules))
    import_modules(raw["imports"])
    return validate(raw, command=command)


def sweep_points(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """The configs of a sweep, ``(label, config)`` per data point; every architecture is
    repeated per swept width (named ``<name>-d<width>``). No sweep: ``[("", config)]``."""
    sweep = config.sweep
    if not sweep.is_set:
        return [("", config)]
    points = []
    for data in sweep.data or [{}]:
        update: dict[str, Any] = {"data": DataSection.model_validate({**config.data.spec(), **data}),
                                  "sweep": SweepSection()}
        if sweep.d_model is not None:
            update["architectures"] = [a.renamed(f"{a.name}-d{width}", d_model=width)
                                       for a in config.architectures for width in sweep.d_model]
        label = "-".join(f"{k}{v}" for k, v in data.items())
        points.append((label, config.model_copy(update=update, deep=True)))
    return points


def sections_help() -> str:
    """One line per config section, from the models' own field docs (the ``--help`` epilog)."""
    return "\n".join(f"  {name:<14}{field.description or ''}" for name, field in RunConfig.model_fields.items())


def config_schema() -> dict:
    """The JSON schema of a run config (``seqarch schema``)."""
    return RunConfig.model_json_schema()
