"""A researcher's own layers on the command line: importing the modules that register them.

A mixer registered with ``@register_mixer`` exists only in a process that imported its
module. The CLI imports such modules before it reads a config's ``architectures``:

- ``--import MODULE`` (repeatable) and a config's ``imports: [MODULE, ...]``;
- the entry points of group ``seqarch.mixers`` of installed packages, loaded once, when
  the CLI first needs the registry (``import seqarch`` alone loads none of them).

A run saves its imports in its folder's ``config.yaml``, so ``--resume`` imports them again.
Modules are found on ``sys.path`` and in the current directory, as ``python -m`` would.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from types import ModuleType

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "seqarch.mixers"
_entry_points_loaded = False


class PluginError(ValueError):
    """A module named by ``--import``, ``imports:`` or an entry point that cannot be imported."""


def import_modules(names: list[str], *, source: str = "imports") -> list[ModuleType]:
    """Import every module in ``names`` (each once; importing registers its mixers and presets)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # after everything else: a plugin never shadows an installed module
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except Exception as error:  # any failure of a researcher's module is reported by its name
            raise PluginError(f"{source}: cannot import {name!r} ({type(error).__name__}: {error})") from error
    return modules


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load the ``group`` entry points of installed packages, once per process; returns their names."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    loaded = []
    for entry in importlib.metadata.entry_points(group=group):
        try:
            entry.load()
        except Exception as error:  # whatever a package raises is reported with its entry point
            raise PluginError(f"entry point {entry.name!r} ({entry.value}) of group {group!r}: cannot be loaded "
                              f"({type(error).__name__}: {error})") from error
        loaded.append(entry.name)
    return loaded
