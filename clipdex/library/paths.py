"""Where libraries live: the default one, the demo's, and which one a command works on."""

from __future__ import annotations

import os
from pathlib import Path

from clipdex.userdirs import user_folder

DB_NAME = "clipdex.db"


def default_library_path() -> Path:
    """``$CLIPDEX_LIBRARY``, else the per-user data directory of the platform."""
    env = os.environ.get("CLIPDEX_LIBRARY")
    if env:
        return Path(env).expanduser()
    return user_folder("data") / "library"


def demo_library_path() -> Path:
    """Where ``clipdex demo`` builds its library: beside the default one, never inside it."""
    return default_library_path().with_name("demo-library")


def resolve_library(explicit: Path | str | None) -> tuple[Path, bool]:
    """The library a command works on, and whether it is the demo's.

    ``explicit`` (``--library`` or ``$CLIPDEX_LIBRARY``) wins. Otherwise the default
    library, except that the demo library stands in while the user has none of their own,
    so the commands the demo prints work as printed. Commands that add pictures must not
    use this: they always create the user's own default library.
    """
    if explicit:
        return Path(explicit).expanduser(), False
    default, demo = default_library_path(), demo_library_path()
    if not (default / DB_NAME).is_file() and (demo / DB_NAME).is_file():
        return demo, True
    return default, False
