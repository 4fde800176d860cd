"""Paths given on the command line or in a config: what already exists where a file or directory is wanted."""

from __future__ import annotations

from pathlib import Path


def existing_ancestor(path: Path) -> Path:
    """`path` itself when it exists, else its nearest existing parent (the filesystem root at worst): whether a
    regular file stands in the way of creating `path`."""
    return next(p for p in (path, *path.absolute().parents) if p.exists())
