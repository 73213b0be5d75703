"""``seqarch eval OUT_DIR --tasks ...``: lm-evaluation-harness on an exported folder, through the
harness's own ``hf`` model, so the numbers are those of
``lm_eval --model hf --model_args pretrained=OUT_DIR,trust_remote_code=True --tasks ...``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def evaluate(model_dir: str | os.PathLike, tasks: list[str], *, include_path: str | None = None,
             limit: float | None = None, batch_size: int = 1, output: str | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """The harness's results dict (``results[task][metric]``) for ``tasks`` on ``model_dir``."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"OUT_DIR: expected a folder written by seqarch export (with config.json), "
                         f"got {str(model_dir)!r}")
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise ValueError("tasks: expected at least one task name, got none")
    if include_path is not None and not Path(include_path).is_dir():
        raise ValueError(f"include_path: expected a folder of task YAMLs, got {include_path!r}")
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path is not None:  # the built-in tasks' index costs seconds: skip it when not needed
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in manager.all_tasks for t in tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"tasks: unknown task(s) {unknown}; expected lm-eval task names (or pass "
                         "--include-path with your own task YAMLs)")
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_dir},trust_remote_code=True,dtype=float32",
        tasks=tasks, task_manager=manager, limit=limit, batch_size=batch_size, device=device,
    )
    if output is not None:
        Path(output).write_text(json.dumps(results["results"], indent=2, default=str))
    return results


def summary(results: dict[str, Any]) -> str:
    """One line per task and metric: ``task  metric  value``."""
    lines = []
    for task, metrics in results["results"].items():
        for name, value in metrics.items():
            skipped = name.endswith("_stderr,none") or name in ("alias", "sample_len")
            if isinstance(value, (int, float)) and not skipped:
                lines.append(f"{task}  {name}  {value:.4f}")
    return "\n".join(lines)
