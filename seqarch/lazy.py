"""Package attributes imported on first use (PEP 562), so light entry points stay light.

``import seqarch`` or ``seqarch --help`` must not pay for torch and Lightning (seconds
on a cold laptop); the names a package exports are resolved the first time they are
read, e.g. ``seqarch.build_mixer`` imports :mod:`seqarch.mixers` then.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``name -> submodule`` (relative, e.g. ``".mixers"``).

    >>> __getattr__, __dir__ = lazy_exports(__name__, {"build_mixer": ".mixers"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*importlib.import_module(package).__dict__, *exports})

    return __getattr__, __dir__
