"""The embedded default corpus: the Python standard library's own ``*.py`` sources.

Always present, offline, a few MB of real text (code) - enough for a CPU comparison of language
models without downloading anything.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

# Whole directories left out: installed third-party packages, caches, and the test suites (large,
# repetitive, and not what the library's code looks like).
EXCLUDED_DIRECTORIES = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's ``*.py`` files under ``root`` (default: this interpreter's), sorted by path."""
    root = stdlib_root() if root is None else root
    files = []
    for directory, subdirectories, names in os.walk(root):
        # Pruning in place keeps os.walk out of site-packages (often far larger than the stdlib).
        subdirectories[:] = [name for name in subdirectories if name not in EXCLUDED_DIRECTORIES]
        files.extend(Path(directory, name) for name in names if name.endswith(".py"))
    return sorted((path for path in files if path.is_file()), key=lambda path: path.relative_to(root).as_posix())
