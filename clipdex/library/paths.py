"""Where libraries live: the default one, the demo's, and which one a command works on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from clipdex.userdirs import user_folder

DB_NAME = "clipdex.db"


def default_library_path() -> Path | str:
    """``$CLIPDEX_LIBRARY`` (a folder or a database URL), else the per-user data directory of the platform."""
    from clipdex.library.dialect import is_url

    env = os.environ.get("CLIPDEX_LIBRARY")
    if env:
        return env if is_url(env) else Path(env).expanduser()
    return user_folder("data") / "library"


def cache_folder(url: str) -> Path:
    """The local folder of a library whose database is on a server (its search index files, thumbnails).

    ``$CLIPDEX_CACHE_DIR/libraries/<key>``, else the per-user cache folder's (``~/.cache/clipdex``);
    ``<key>`` is the server's host, port and database, with a short hash of the whole URL (user
    and password left out, so people sharing the database share nothing here but the name).
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    base = Path(os.environ["CLIPDEX_CACHE_DIR"]).expanduser() if os.environ.get("CLIPDEX_CACHE_DIR") \
        else user_folder("cache")
    where = f"{parsed.get_backend_name()}://{parsed.host or 'local'}:{parsed.port or ''}/{parsed.database}"
    readable = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{parsed.host or 'local'}-{parsed.database}")
    return base / "libraries" / f"{readable[:60]}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def demo_library_path() -> Path:
    """Where ``clipdex demo`` builds its library: beside the default one, never inside it."""
    default = default_library_path()
    return (user_folder("data") / "library" if isinstance(default, str) else default).with_name("demo-library")


def resolve_library(explicit: Path | str | None) -> tuple[Path | str, bool]:
    """The library a command works on, and whether it is the demo's.

    ``explicit`` (``--library`` or ``$CLIPDEX_LIBRARY``) wins. Otherwise the default
    library, except that the demo library stands in while the user has none of their own,
    so the commands the demo prints work as printed. Commands that add pictures must not
    use this: they always create the user's own default library.
    """
    from clipdex.library.dialect import is_url

    if explicit:
        return (explicit if is_url(explicit) else Path(explicit).expanduser()), False
    default, demo = default_library_path(), demo_library_path()
    if isinstance(default, str):  # a database URL
        return default, False
    if not (default / DB_NAME).is_file() and (demo / DB_NAME).is_file():
        return demo, True
    return default, False
