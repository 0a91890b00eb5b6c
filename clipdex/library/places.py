"""Where pictures are, across machines: roots that belong to a machine, and roots with a shared name.

A path alone does not say where a picture is once several machines share a library: the
same share may be mounted at ``/mnt/archive`` on one and ``/srv/photos`` on another, and
``/home/ann/pics`` on one machine is not the folder of that name on the next. So:

* every root records the machine it was given on (``roots.machine``; see :func:`machine`);
* a root may be declared under a shared name (``--root-name archive=/mnt/archive``), kept
  per machine in ``meta`` (``root_name:<machine>:<name>`` = the mount point). Pictures under
  it are stored as ``@archive/sub/pic.jpg``, relative to the name, and each machine reads
  them at its own mount point of that name.
  A picture whose named root is not declared on this machine is simply not here: it is not
  served from here and never taken for deleted.

Only the library reads and writes stored forms; everything outside it sees local paths
(:meth:`Places.local`, :meth:`Places.stored`).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from clipdex.errors import UsageError
from clipdex.library.schema import Meta, RootRow, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

PREFIX = "@"
META = "root_name:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DECLARED: dict[str, str] = {}  # this process's --root-name declarations


def machine() -> str:
    """This machine's name as the library records it: ``$CLIPDEX_MACHINE``, else the host name."""
    return os.environ.get("CLIPDEX_MACHINE") or socket.gethostname()


def parse(text: str) -> tuple[str, str]:
    """``NAME=PATH`` as ``(name, absolute path)``; :class:`UsageError` in words if it is not one."""
    name, sep, path = text.partition("=")
    name = name.strip()
    if not sep or not path:
        raise UsageError(f"a root name is NAME=PATH, such as archive=/mnt/archive, not {text!r}")
    if not _NAME.match(name):
        raise UsageError(f"a root name is letters, digits, '.', '_' or '-' (up to 64), not {name!r}")
    return name, os.path.abspath(os.path.expanduser(path)).rstrip(os.sep) or os.sep


def forget_declared() -> None:
    """Forget this process's declarations (each command starts from its own)."""
    _DECLARED.clear()


def declare(text: str) -> tuple[str, str]:
    """Declare ``NAME=PATH`` for every library this process opens (what ``--root-name`` does)."""
    name, path = parse(text)
    _DECLARED[name] = path
    return name, path


class Places:
    """One library's translation between local paths and stored ones, on this machine."""

    def __init__(self, lib: Library):
        self.lib = lib
        self.machine = machine()
        self._mounts: dict[str, str] | None = None

    def mounts(self) -> dict[str, str]:
        """name -> local mount point of every root name on this machine (recorded, and declared now)."""
        if self._mounts is None:
            mine = f"{META}{self.machine}:"
            with self.lib.session() as s:
                rows = s.execute(select(Meta.key, Meta.value).where(Meta.key.startswith(META))).all()
            recorded = {key[len(mine):]: value for key, value in rows if key.startswith(mine)}
            self._mounts = {**recorded, **_DECLARED}
        return self._mounts

    def _by_length(self) -> list[tuple[str, str]]:
        return sorted(self.mounts().items(), key=lambda item: -len(item[1]))

    def stored(self, path: str) -> str:
        """How the library stores local ``path`` (relative to a root name when under one)."""
        if not self.mounts():
            return path
        for name, mount in self._by_length():
            if path == mount or path.startswith(mount.rstrip(os.sep) + os.sep):
                return PREFIX + name + path[len(mount.rstrip(os.sep)):]
        return path

    def local(self, stored: str) -> str:
        """Where a stored path is on this machine; a named root's path stays as stored when the name
        is not declared here (it is not an absolute path, so nothing reads or serves it)."""
        if not stored.startswith(PREFIX):
            return stored
        name, _, rest = stored[len(PREFIX):].partition("/")
        mount = self.mounts().get(name)
        return stored if mount is None else mount.rstrip(os.sep) + (os.sep + rest if rest else "")

    def record(self, session, roots: list[str]) -> None:  # noqa: ANN001 - a Session
        """Remember ``roots`` (local paths given to ``index``) with this machine, and this process's
        root names (inside ``session``'s transaction)."""
        from clipdex.library import dialect

        for name, path in _DECLARED.items():
            dialect.upsert(session, Meta, {"key": f"{META}{self.machine}:{name}", "value": path}, ["key"])
        for root in roots:
            stored = self.stored(root)
            dialect.upsert(session, RootRow, {"path": stored, "added_at": utcnow(),
                                              "machine": None if stored.startswith(PREFIX) else self.machine},
                           ["path"])

    def roots(self) -> list[str]:
        """The local paths of the roots pictures may be served from here: named roots declared on this
        machine, and this machine's own folders (on SQLite, which one machine uses, every folder)."""
        with self.lib.session() as s:
            rows = s.execute(select(RootRow.path, RootRow.machine)).all()
        out = []
        for path, owner in rows:
            if path.startswith(PREFIX):
                local = self.local(path)
                if not local.startswith(PREFIX):
                    out.append(local)
            elif owner is None or owner == self.machine or not self.lib.server:
                out.append(path)
        return out

    def folder(self, path: str | Path) -> str:
        """``stored`` for a folder prefix (ends in a separator when ``path`` does)."""
        text = str(path)
        trailing = text.endswith(os.sep)
        stored = self.stored(text.rstrip(os.sep))
        return stored + os.sep if trailing and not stored.endswith(os.sep) else stored
