"""The importer written into an exported model folder (as ``seqarch_code.py``, with ``PACKAGE``
and ``SOURCES`` appended): it writes seqarch's model code from ``SOURCES`` out as a package
named ``PACKAGE`` (a private name holding the sources' digest) next to itself and imports it,
so transformers' remote-code loader needs no installed seqarch. Real files, not strings run
with ``exec``: Triton's ``@jit`` reads its kernels' source from their files.

This file imports nothing of seqarch and only the standard library.
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

PACKAGE = "_seqarch_vendored"  # replaced in the written file by a name with the sources' digest
SOURCES: dict = {}  # relative path ("mixers/base.py") -> source text; filled in the written file


def _write_package(parent: Path) -> Path:
    """Write ``SOURCES`` under ``parent/PACKAGE`` (each file atomically; unchanged files are kept)."""
    folder = parent / PACKAGE
    for relative, text in SOURCES.items():
        path = folder / relative
        if path.is_file() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(partial, path)
    return folder


def load_package():
    """The vendored ``hf`` package (its ``configuration`` and ``modeling`` imported)."""
    if PACKAGE not in sys.modules:
        try:
            folder = _write_package(Path(__file__).resolve().parent)
        except OSError:  # a read-only folder: the temporary directory instead
            folder = _write_package(Path(tempfile.gettempdir()) / "seqarch_remote_code")
        spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    importlib.import_module(PACKAGE + ".hf.modeling")
    return sys.modules[PACKAGE + ".hf"]
