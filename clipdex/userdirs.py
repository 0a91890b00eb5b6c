"""The platform's per-user folders for clipdex's data (libraries) and caches (ONNX exports)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def user_folder(kind: str) -> Path:
    """``<per-user data or cache folder>/clipdex``; ``kind`` is ``data`` or ``cache``.

    Linux: ``$XDG_DATA_HOME`` or ``~/.local/share``, ``$XDG_CACHE_HOME`` or ``~/.cache``;
    macOS: ``~/Library/Application Support``, ``~/Library/Caches``; Windows: ``%LOCALAPPDATA%``.
    """
    if kind not in ("data", "cache"):
        raise ValueError(f"unknown kind of folder {kind!r}")
    if sys.platform == "darwin":
        base = Path.home() / "Library" / ("Application Support" if kind == "data" else "Caches")
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif kind == "data":
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "clipdex"
