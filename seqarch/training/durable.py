"""Files that a killed process or a power loss never leaves half-written: written beside their place,
flushed to the disk, renamed into place, and the folder entry flushed too."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk: a rename is durable across a power loss only
    once the file's bytes and then the folder's entry are on the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:  # a folder cannot be opened on some systems (Windows); its entry is then the OS's business
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def replace_durably(partial: Path, final: Path) -> None:
    """``os.replace(partial, final)`` with the data flushed before and the folder entry after."""
    fsync_path(partial)
    os.replace(partial, final)
    fsync_path(final.parent)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path``: readers see the old file or the whole new one, never a part."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    replace_durably(partial, path)
