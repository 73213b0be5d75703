"""The ``seqarch`` command line: ``seqarch train``, ``seqarch compare``, ``seqarch architectures``
and ``seqarch schema``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path

from .config import config_schema, load_config, sections_help, shipped_experiments
from .errors import CheckpointError, ConfigError, option_error
from .plugins import PluginError, import_modules, load_entry_points

log = logging.getLogger("seqarch")

EXAMPLES = """\
  seqarch compare                                   # embedded MQAR default (2 CPU cores, < 4 min)
  seqarch compare mqar_sweep                        # a shipped experiment, by name
  seqarch compare experiments/lm_small.yaml trainer.devices=4 trainer.strategy=ddp
  seqarch compare my.yaml --import my_layers        # a module that registers your own mixer
  seqarch train experiments/lm_small.yaml model.mixer=s4d train.steps=200
  seqarch train experiments/mqar.yaml --resume      # continue a killed run
  seqarch mad mad mad.variants=baseline             # the MAD suite (its six baselines only)
  seqarch scale scale_small --resume                # loss against FLOPs; train only the missing points
  seqarch architectures                             # the presets and mixers architectures: may name
"""


def epilog() -> str:
    """The ``--help`` epilog: the config sections (from the config models' own docs) and examples."""
    return (f"config sections (seqarch schema prints every key, its type and default):\n{sections_help()}\n\n"
            f"shipped experiments: {', '.join(shipped_experiments())}\n\nexamples:\n{EXAMPLES}")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line text (the epilog's lists) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqarch", formatter_class=_HelpFormatter, epilog=epilog(),
        description="Train seqarch models and compare architectures at matched parameter or FLOP budgets.",
    )
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{train,compare,mad,scale,architectures,schema}")
    plugins = argparse.ArgumentParser(add_help=False)
    plugins.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                         help="import MODULE first (repeatable): it registers your own mixers or presets; "
                         "a resumed run imports it again")
    common = argparse.ArgumentParser(add_help=False, parents=[plugins])
    common.add_argument("config", nargs="?", default=None,
                        help="YAML run config, or the name of a shipped experiment (mqar, lm_small, ...); "
                        "compare without one runs the embedded MQAR default, mad and scale the shipped mad and "
                        "scale_small")
    common.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, values parsed as YAML (train.steps=100 train.lr=[1e-3,3e-3])")
    common.add_argument("--output", default=None,
                        help="parent folder of the run folder (default: the config's output, 'runs')")
    common.add_argument("--name", default=None, help="run name, the run folder under --output (default: config name)")
    common.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in the run folder (same data order and RNG)")
    common.add_argument("--cache-dir", default=None,
                        help="where tokenised corpora are cached (default $SEQARCH_CACHE or ~/.cache/seqarch)")
    common.add_argument("--quiet", action="store_true", help="no progress bar, only the result lines")
    text = {"epilog": epilog(), "formatter_class": _HelpFormatter}
    commands.add_parser("train", parents=[common], **text, help="train one model (the config's model section)",
                        description="Train one model: the config's model section on its data.")
    commands.add_parser("compare", parents=[common], **text,
                        help="train every listed architecture at a matched budget and write a report",
                        description="Train every architecture in the config's architectures list, each resized "
                        "to the budget (params: N or flops: C for the whole run), with the same data, seeds and "
                        "recipe; write results.json, report.md and plots into the run folder.")
    add_suite_commands(commands, common, text)
    commands.add_parser("architectures", parents=[plugins], help="list the presets and mixers, one line each",
                        description="List what a config's architectures: may name: the presets (a mixer with the "
                        "channel mixer and options of its paper) and the registered mixers.")
    commands.add_parser("schema", help="print the JSON schema of a run config",
                        description="Print the JSON schema of a run config: every key, its type, default and meaning.")
    add_hf_commands(commands)
    add_launcher_options(commands.choices["compare"])
    return parser


SUITE_COMMANDS = ("mad", "scale")  # many comparisons under one run folder (seqarch.training.suite)
SUITE_DEFAULTS = {"mad": "mad", "scale": "scale_small"}  # the shipped experiment each runs without a config


def add_suite_commands(commands, common: argparse.ArgumentParser, text: dict) -> None:
    """``seqarch mad`` and ``seqarch scale``: a comparison per MAD task variant, or per FLOP budget."""
    commands.add_parser("mad", parents=[common], **text, help="the MAD suite: every architecture on every task variant",
                        description="Train every architecture on each MAD task variant of the config's mad: section "
                        "(Poli et al., 2024) and write the MAD scores (accuracy averaged over variants, then tasks) "
                        "to report.md and mad.json in the run folder.")
    commands.add_parser("scale", parents=[common], **text,
                        help="train every architecture at a grid of FLOP budgets and fit loss = a C^-b + e",
                        description="Train every architecture at each training-FLOP budget of the config's scale: "
                        "section (each resized to the budget), fit loss(C) = a C^-b + e per architecture, and write "
                        "the exponents with 95% intervals, the budgets where each curve crosses the reference's, "
                        "scale.md, scale.json and the plot into the run folder.")


def run_suite_command(args: argparse.Namespace, config, command_line: str) -> int:
    """Run ``seqarch mad`` or ``seqarch scale`` on a valid config; 1 when a run failed on a NaN."""
    if args.command == "mad":
        from .mad import run_mad

        points, scores = run_mad(config, resume=args.resume, cache_dir=args.cache_dir, quiet=args.quiet,
                                 command_line=command_line)
        log.info("MAD scores: %s; report: %s", ", ".join(f"{n} {s['mad']:.3f}" for n, s in scores.items()),
                 config.folder / "report.md")
    else:
        from .scale import run_scale

        points, fits = run_scale(config, resume=args.resume, cache_dir=args.cache_dir, quiet=args.quiet,
                                 command_line=command_line)
        log.info("exponents: %s; report: %s", ", ".join(f"{n} b={f.b:.3g}" for n, f in fits.items() if f),
                 config.folder / "scale.md")
    return 1 if any(r.failure for p in points if p.done for r in p.results) else 0


def add_launcher_options(compare: argparse.ArgumentParser) -> None:
    """``seqarch compare --launcher local|slurm`` (the ``cluster`` extra) and ``--collect RUN_FOLDER``."""
    group = compare.add_argument_group("launching jobs (one per architecture, learning rate and seed; needs the "
                                       "cluster extra: pip install -e '.[cluster]')")
    group.add_argument("--launcher", default=None, help="local (subprocesses) or slurm (sbatch through submitit)")
    group.add_argument("--collect", default=None, metavar="RUN_FOLDER",
                       help="gather the finished jobs of a launched comparison into its report")
    group.add_argument("--seeds", default=None, help="comma-separated seeds (default: train.seed)")
    group.add_argument("--partition", default=None, help="SLURM partition")
    group.add_argument("--gpus", type=int, default=None, help="GPUs per node")
    group.add_argument("--time", type=int, default=None,
                       help="time limit per job in minutes (default: the config's slurm.time, 60)")
    group.add_argument("--account", default=None, help="SLURM account")
    group.add_argument("--slurm-option", dest="slurm_options", action="append", default=[], metavar="KEY=VALUE",
                       help="a further submitit SLURM parameter, value parsed as YAML (repeatable: --slurm-option "
                       "qos=high --slurm-option mem=64G); over the config's slurm.extra")
    group.add_argument("--no-wait", action="store_true", help="local launcher: return once the jobs are started")


def slurm_options(args: argparse.Namespace, config):
    """The scheduler options: the command line's, else the config's ``slurm:`` section; a command-line
    value is checked by the rule of the config key it stands for (``--time 0`` as ``slurm.time: 0``)."""
    from pydantic import ValidationError

    from .config import SlurmSection, parse_yaml
    from .launch import SlurmOptions, check_slurm_extra

    values = config.slurm.model_dump()
    given = {"partition": ("--partition", args.partition), "gpus": ("--gpus", args.gpus),
             "time": ("--time", args.time), "account": ("--account", args.account)}
    for key, (option, value) in given.items():
        if value is None:
            continue
        try:
            SlurmSection.model_validate({key: value})
        except ValidationError as error:
            raise ValueError(option_error(option, error)) from None
        values[key] = value
    given_extra = {}
    for item in getattr(args, "slurm_options", None) or []:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--slurm-option: expected KEY=VALUE (a submitit SLURM parameter, as in qos=high), "
                             f"got {item!r}")
        given_extra[key] = parse_yaml(value, where=f"--slurm-option {key}")
    section = SlurmSection.model_validate(values)
    if getattr(args, "launcher", None) == "slurm":  # the options are SLURM's: a local launch leaves them be
        check_slurm_extra(section.extra, "slurm.extra")
        check_slurm_extra(given_extra, "--slurm-option")
    return SlurmOptions(partition=section.partition, gpus_per_node=section.gpus, time_min=section.time,
                        account=section.account, extra={**section.extra, **given_extra})


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``, checked by the rule of the config's ``train.seeds`` (integers >= 0, distinct)."""
    from pydantic import ValidationError

    from .config import TrainSection

    try:
        return TrainSection.model_validate({"seeds": text.split(",")}).seeds
    except ValidationError as error:
        raise ValueError(f"{option_error('--seeds', error)} (as in --seeds 0,1,2)") from None


def run_launch_command(args: argparse.Namespace, config=None) -> int:
    """``--collect`` (no config), or submit the config's jobs: local ones are waited for, then collected;
    a run whose jobs are all finished (or still running elsewhere) is collected at once."""
    from .launch import collect, launch, wait_for

    folder = args.collect
    if folder is None:
        options = slurm_options(args, config)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        jobs = launch(config, args.launcher, seeds=seeds, options=options, cache_dir=args.cache_dir,
                      resume=args.resume)
        if jobs and (args.launcher != "local" or args.no_wait):
            log.info("%d job(s) submitted; gather them with: seqarch compare --collect %s", len(jobs), config.folder)
            return 0
        wait_for(jobs)
        folder = config.folder
    results, missing = collect(folder, cache_dir=args.cache_dir)
    log.info("collected %d result(s) into %s; %d job(s) unfinished%s", len(results), folder, len(missing),
             "".join(f"\n  {m}" for m in missing))
    return 0 if results else 1


def add_hf_commands(commands) -> None:
    """``seqarch export`` and ``seqarch eval`` (the ``hf`` extra; transformers is imported only when they run)."""
    export = commands.add_parser(
        "export", help="a trained run's latest checkpoint and tokenizer as a Hugging Face folder",
        description="Write RUN_FOLDER's latest checkpoint (safetensors), its tokenizer and the code that loads "
        "them into OUT_DIR: AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True) then works "
        "without seqarch installed. Needs the hf extra (pip install -e '.[hf]').")
    export.add_argument("run_folder", metavar="RUN_FOLDER", help="a run folder holding checkpoints/")
    export.add_argument("out_dir", metavar="OUT_DIR", help="a new (or empty) folder to write")
    evaluate = commands.add_parser(
        "eval", help="lm-evaluation-harness tasks on an exported folder",
        description="Run lm-evaluation-harness tasks on OUT_DIR (what seqarch export wrote) through its hf model; "
        "the same as lm_eval --model hf --model_args pretrained=OUT_DIR,trust_remote_code=True.")
    evaluate.add_argument("model_dir", metavar="OUT_DIR", help="an exported Hugging Face folder")
    evaluate.add_argument("--tasks", required=True, help="comma-separated task names")
    evaluate.add_argument("--include-path", default=None, help="a folder of task YAMLs of your own")
    evaluate.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction)")
    evaluate.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size")
    evaluate.add_argument("--output", default=None, help="write the results JSON here")


def run_hf_command(args: argparse.Namespace) -> int:
    """Run ``seqarch export`` or ``seqarch eval``; bad input is one error line and exit code 2."""
    try:
        if args.command == "export":
            from ..hf.export import export_run

            log.info("seqarch export: wrote %s", export_run(args.run_folder, args.out_dir))
            return 0
        from ..hf.evaluate import evaluate, summary

        results = evaluate(args.model_dir, args.tasks.split(","), include_path=args.include_path,
                           limit=args.limit, batch_size=args.batch_size, output=args.output)
        print(summary(results))
        return 0
    except ImportError as error:
        log.error("seqarch %s: error: %s (install the hf extra: pip install -e '.[hf]')", args.command, error)
        return 2
    except (CheckpointError, ValueError) as error:
        log.error("seqarch %s: error: %s", args.command, error)
        return 2


def _split_config_argument(args: argparse.Namespace) -> None:
    # A config path that holds "=" would have been taken for an override; give it back.
    if args.config is None and args.overrides and Path(args.overrides[0]).is_file():
        args.config = args.overrides.pop(0)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


def _quiet_lightning(quiet: bool) -> None:
    """Keep Lightning's device lines (they say where a run trains) but not its adverts;
    ``--quiet`` drops its info lines altogether.

    Lightning gives its loggers handlers of their own (``lightning`` one that prints ``INFO: ...``); with
    the root handler of :func:`main` every line would print twice, so they go and the root prints once.
    """
    import lightning.pytorch  # noqa: F401 - its handlers exist once it is imported

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addFilter(_DropAdverts())
    if quiet:
        lightning_log.setLevel(logging.WARNING)


def list_architectures() -> str:
    """One line per preset, then the mixers (a bare mixer name runs the config's model section)."""
    from ..mixers import MIXERS
    from ..models.presets import all_presets

    presets = all_presets()

    width = max(len(name) for name in [*presets, *MIXERS])
    lines = ["presets (architectures: [NAME] or {name: ..., preset: NAME, <ModelConfig overrides>}):"]
    for preset in presets.values():
        fields = ", ".join(f"{k}={v}" for k, v in preset.fields.items() if k != "mixer_options")
        lines.append(f"  {preset.name:<{width}}  {preset.description} [{fields}]")
    lines.append("mixers (a name that is no preset: that mixer with the config's model section):")
    for name, cls in sorted(MIXERS.items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__
        lines.append(f"  {name:<{width}}  {summary}")
    return "\n".join(lines)


KEY_VALUE_OPTIONS = ("--slurm-option",)  # options whose value is KEY=VALUE itself, not an override


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # KEY=VALUE overrides may come before or after options; argparse cannot mix a
    # variadic positional with options under subcommands, so they are taken out first.
    is_override = [("=" in a and not a.startswith("-") and (i == 0 or argv[i - 1] not in KEY_VALUE_OPTIONS))
                   for i, a in enumerate(argv)]
    args = build_parser().parse_args([a for a, o in zip(argv, is_override) if not o])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command in ("export", "eval"):
        return run_hf_command(args)
    if args.command == "schema":
        print(json.dumps(config_schema(), indent=2))
        return 0
    try:
        # Installed packages' mixers, then the researcher's own, before any name is looked up.
        load_entry_points()
        if args.command == "architectures":
            import_modules(args.imports, source="--import")
            print(list_architectures())
            return 0
    except PluginError as error:
        log.error("seqarch %s: error: %s", args.command, error)
        return 2
    args.overrides = [a for a, o in zip(argv, is_override) if o] + list(args.overrides)
    _split_config_argument(args)
    if getattr(args, "collect", None) is not None:
        try:
            return run_launch_command(args)
        except (ConfigError, ValueError) as error:
            log.error("seqarch compare: error: %s", error)
            return 2
    if args.command == "train" and args.config is None and not args.overrides:
        log.info("seqarch train: no config given; training the embedded default's model section (MQAR)")
    overrides = list(args.overrides)
    if args.output is not None:
        overrides.append(f"output={args.output}")
    if args.name is not None:
        overrides.append(f"name={args.name}")
    try:
        suite = args.command in SUITE_COMMANDS  # a suite's config and run folder are those of a comparison
        if suite and args.config is None:
            args.config = SUITE_DEFAULTS[args.command]
        config = load_config(args.config, overrides, command="compare" if suite else args.command,
                             imports=args.imports, resume=args.resume)
        # After the config is read: importing Lightning takes seconds, which a config error need not wait.
        _quiet_lightning(args.quiet)
        if suite:
            return run_suite_command(args, config, "seqarch " + shlex.join(argv))
        if getattr(args, "launcher", None) is not None:
            return run_launch_command(args, config)
        from .session import run_command

        return run_command(args.command, config, resume=args.resume, cache_dir=args.cache_dir,
                           quiet=args.quiet, command_line="seqarch " + shlex.join(argv), started=time.time())
    except (ConfigError, CheckpointError, ValueError) as error:
        log.error("seqarch %s: error: %s", args.command, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
