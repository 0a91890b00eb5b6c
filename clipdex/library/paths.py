"""Where libraries live: the default one, the demo's, and which one a command works on; whether a path
lies under a folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from clipdex.errors import UsageError
from clipdex.userdirs import user_folder

DB_NAME = "clipdex.db"


def under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies beneath it (as written: no symlink is followed)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def folder_or_url(value: str) -> Path | str:
    """A ``--library`` value: a database URL stays as given; a ``file://`` URL is its folder; anything
    else is a folder path."""
    from clipdex.library.dialect import is_url

    if is_url(value):
        return value
    if value.lower().startswith("file://"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"a file:// library URL names a folder on this machine, not on {parts.netloc}: {value}")
        return Path(unquote(parts.path))
    return Path(value).expanduser()


def default_library_path() -> Path | str:
    """``$CLIPDEX_LIBRARY`` (a folder or a database URL), else the per-user data directory of the platform."""
    env = os.environ.get("CLIPDEX_LIBRARY")
    if env:
        return folder_or_url(env)
    return user_folder("data") / "library"


#: What in a server URL's query says which server, database or schema it reaches (the rest, such as
#: credentials or timeouts, does not change which library that is).
_PLACE_PARAMS = ("host", "hostaddr", "port", "dbname", "service", "options")


def cache_base() -> Path:
    """Where server libraries' cache folders go: ``$CLIPDEX_CACHE_DIR`` (``--cache-dir``), else the per-user
    cache folder (``~/.cache/clipdex``)."""
    env = os.environ.get("CLIPDEX_CACHE_DIR")
    return Path(env).expanduser() if env else user_folder("cache")


def cache_folder(url: str, library_id: str) -> Path:
    """The local folder of a library whose database is on a server (its search index files).

    ``<cache base>/libraries/<host>-<database>-<key>``: ``<key>`` hashes where the URL leads (server,
    port, database, and the query's host, port and options, which choose a socket or a schema) with
    the library's own id, so two libraries never share a folder (nor a database cloned from another).
    User and password are left out: people sharing the database share nothing here but the name.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    place = sorted((k, str(v)) for k, v in parsed.query.items() if k in _PLACE_PARAMS)
    where = f"{parsed.get_backend_name()}://{parsed.host or 'local'}:{parsed.port or ''}/{parsed.database}?{place}"
    readable = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{parsed.host or 'local'}-{parsed.database}")
    key = hashlib.sha256(f"{where}#{library_id}".encode()).hexdigest()[:12]
    return cache_base() / "libraries" / f"{readable[:60]}-{key}"


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
