"""Pool the seeds of several ``seqarch compare`` runs of one recipe into one table per architecture.

A comparison is often trained in parts (halves side by side on a small machine, more seeds later);
each part writes its own ``results.json``.  This reads every given run folder (or ``results.json``),
collects each architecture's per-seed results, refuses to pool runs whose recipes differ (the
configs must agree apart from the run name, the output folder, the architecture list and the
seeds), and prints a
markdown table: each seed's value and the mean +- the 95% Student-t half-width over all seeds
(``seqarch.training.stats.mean_interval``, the report's own interval).

    python scripts/pool_seeds.py scripts/results/training/mqar_families_w128_{a,b,seeds12_a,seeds12_b}
    python scripts/pool_seeds.py RUN ... --attribute best     # final, best, test (default) or train_final
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqarch.training.stats import mean_interval

ATTRIBUTES = ("test", "final", "best", "train_final")
# Config keys that may differ between the parts of one comparison.
PER_PART = ("name", "output", "architectures")


def load(path: Path) -> dict:
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(f"runs: expected a compare run folder or its results.json, got {path} (no {file.name})")
    return json.loads(file.read_text())


def recipe(results: dict) -> dict:
    """The config without the keys a part of a comparison may change (name, architectures, seeds)."""
    config = {key: value for key, value in results["config"].items() if key not in PER_PART}
    config["train"] = {key: value for key, value in config.get("train", {}).items() if key not in ("seed", "seeds")}
    return config


def per_seed(results: dict, attribute: str) -> dict[str, dict[int, float]]:
    """``{architecture: {seed: value}}`` of one run's results (failed seeds left out)."""
    table: dict[str, dict[int, float]] = {}
    for row in results["results"]:
        for run in row.get("seed_runs") or [row]:
            if run.get("failure") is None and run.get(attribute) is not None:
                table.setdefault(row["name"], {})[int(run["seed"])] = float(run[attribute])
    return table


def pool(parts: list[dict], attribute: str) -> dict[str, dict[int, float]]:
    """Every part's per-seed values, merged; an architecture and seed met twice is an error."""
    first = recipe(parts[0])
    pooled: dict[str, dict[int, float]] = {}
    for part in parts:
        if recipe(part) != first:
            names = part["config"].get("name"), parts[0]["config"].get("name")
            raise SystemExit(f"runs: expected one recipe (configs equal apart from {', '.join(PER_PART)} and the "
                             f"seeds), got {names[0]!r} differing from {names[1]!r}")
        for name, seeds in per_seed(part, attribute).items():
            clash = pooled.setdefault(name, {}).keys() & seeds.keys()
            if clash:
                raise SystemExit(f"runs: {name} seed {min(clash)} appears in two runs")
            pooled[name].update(seeds)
    return pooled


def markdown(pooled: dict[str, dict[int, float]], attribute: str) -> str:
    seeds = sorted({seed for values in pooled.values() for seed in values})
    rows = sorted(pooled.items(), key=lambda item: -mean_interval(list(item[1].values())).mean)
    lines = [f"| architecture | {' | '.join(f'seed {s}' for s in seeds)} | {attribute}, mean ± 95% t |",
             "| --- |" + " --- |" * (len(seeds) + 1)]
    for name, values in rows:
        interval = mean_interval(list(values.values()))
        spread = "" if interval.half_width is None else f" ± {interval.half_width:.3f}"
        cells = [f"{values[s]:.3f}" if s in values else "-" for s in seeds]
        lines.append(f"| {name} | {' | '.join(cells)} | {interval.mean:.3f}{spread} (n={interval.n}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="compare run folders (or their results.json)")
    parser.add_argument("--attribute", default="test", choices=ATTRIBUTES)
    args = parser.parse_args()
    sys.stdout.write(markdown(pool([load(path) for path in args.runs], args.attribute), args.attribute))


if __name__ == "__main__":
    main()
