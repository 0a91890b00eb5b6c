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
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from clipdex.errors import UsageError
from clipdex.library.paths import under
from clipdex.library.schema import ImageRow, Meta, RootRow, SkippedRow, TagRejectionRow, TagRow, utcnow
from clipdex.library.writes import delete_in_chunks

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

PREFIX = "@"
META = "root_name:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DECLARED: dict[str, str] = {}  # this process's --root-name declarations
MOUNTS_TTL_S = 10.0
#: Why :meth:`Places.unreachable` says a picture cannot be read here.
UNDECLARED, FOREIGN, ABSENT = "undeclared", "foreign", "absent"
_CHUNK = 5000  # values per IN (): PostgreSQL takes 65,535 parameters a statement, SQLite 32,766


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
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        raise UsageError(f"cannot expand {path.split(os.sep, 1)[0]} in {text!r}: no such user")
    return name, os.path.abspath(expanded).rstrip(os.sep) or os.sep


def forget_declared() -> None:
    """Forget this process's declarations (each command starts from its own)."""
    _DECLARED.clear()


def declare(text: str) -> tuple[str, str]:
    """Declare ``NAME=PATH`` for every library this process opens (what ``--root-name`` does)."""
    name, path = parse(text)
    if _DECLARED.get(name, path) != path:
        raise UsageError(f"root name {name} is given twice, at {_DECLARED[name]} and at {path}")
    _check_apart({**_DECLARED, name: path}, name)
    _DECLARED[name] = path
    return name, path


def _holds_anything(folder: str) -> bool:
    """Whether ``folder`` is there and not empty (an unmounted drive's mount point is missing or empty); a
    root that is a file (``index PICTURE``) is there when the file is."""
    if os.path.isfile(folder):
        return True
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except PermissionError:
        return True  # there, but closed to us: what is under it is reported file by file
    except OSError:
        return False


def _check_apart(mounts: dict[str, str], name: str) -> None:
    """:class:`UsageError` when ``name``'s mount point is another name's, or inside or around it (as
    written, or where symlinks lead): a picture would then have two stored paths, and be indexed twice."""
    mine = mounts[name]
    for other, mount in sorted(mounts.items()):
        if other == name:
            continue
        for a, b in ((mine, mount), (os.path.realpath(mine), os.path.realpath(mount))):
            if under(a, b) or under(b, a):
                how = "the same folder as" if a == b else "inside" if under(a, b) else "around"
                raise UsageError(f"root names cannot overlap: {name}={mine} is {how} {other}={mount}")


class Places:
    """One library's translation between local paths and stored ones, on this machine."""

    def __init__(self, lib: Library):
        self.lib = lib
        self.machine = machine()
        self._mounts: dict[str, str] | None = None
        self._read_at = 0.0

    def mounts(self) -> dict[str, str]:
        """name -> local mount point of every root name on this machine (recorded, and declared now).

        Read again after :data:`MOUNTS_TTL_S`: a server follows a name that ``index`` declares
        on this machine while it runs."""
        if self._mounts is None or time.monotonic() - self._read_at > MOUNTS_TTL_S:
            self._read_at = time.monotonic()
            mine = f"{META}{self.machine}:"
            with self.lib.session() as s:
                rows = s.execute(select(Meta.key, Meta.value).where(Meta.key.startswith(META))).all()
            # a name never holds ':', so a machine named "x:y" is not taken for names of "x"
            recorded = {key[len(mine):]: value for key, value in rows
                        if key.startswith(mine) and _NAME.match(key[len(mine):])}
            for name in _DECLARED:
                _check_apart({**recorded, **_DECLARED}, name)
            self._mounts = {**recorded, **_DECLARED}
        return self._mounts

    def _by_length(self) -> list[tuple[str, str]]:
        return sorted(self.mounts().items(), key=lambda item: -len(item[1]))

    def stored(self, path: str) -> str:
        """How the library stores local ``path`` (relative to a root name when under one)."""
        if not self.mounts():
            return path
        for name, mount in self._by_length():
            if under(path, mount):
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

    def record(self, session: Session, roots: list[str]) -> dict[str, tuple[int, int]]:
        """Remember ``roots`` (local paths given to ``index``) with this machine, and this process's
        root names (inside ``session``'s transaction), adopting what this machine indexed under a name's
        mount point before the name was declared (:meth:`adopt`): name -> (pictures now stored under
        it, of which merged with a copy already stored so), for names that adopted any."""
        from clipdex.library import dialect

        self.mounts()  # refuses overlapping names before anything is written
        for name, path in _DECLARED.items():
            row = session.get(Meta, f"{META}{self.machine}:{name}")
            if row is not None:
                self._check_move(name, row.value, path)
            else:
                self._check_first_mount(session, name, path)
        for root in roots:
            self._check_not_foreign(session, root)
        gone: list[int] = []
        adopted: dict[str, tuple[int, int]] = {}
        for name, path in _DECLARED.items():
            if not os.path.isdir(path):
                raise UsageError(f"root name {name}={path}: no such folder on this machine")
            dialect.upsert(session, Meta, {"key": f"{META}{self.machine}:{name}", "value": path}, ["key"])
            moved, merged = self.adopt(session, name, path)
            gone += merged
            if moved:
                adopted[name] = (moved, len(merged))
        for root in roots:
            stored = self.stored(root)
            dialect.upsert(session, RootRow, {"path": stored, "added_at": utcnow(),
                                              "machine": None if stored.startswith(PREFIX) else self.machine},
                           ["path"])
        if gone:
            self.lib.forget(session, gone)
            self.lib.bump_generation(session, gone)
        return adopted

    def _check_move(self, name: str, old: str, path: str) -> None:
        """:class:`UsageError` when a declaration moves a name recorded on this machine at ``old`` while that
        mount point is still there: a mistyped path would replace the share's pictures (for every
        machine) with another folder's. A share that really moved has left its old mount point."""
        if old and os.path.realpath(old) != os.path.realpath(path) and _holds_anything(old):
            raise UsageError(
                f"root name {name} is recorded at {old} on this machine ({self.machine}), which is still "
                f"there: a name moves to {path} only once its old mount point is gone or empty (unmounted), "
                "so a mistyped path never replaces the share's pictures; give another folder another name")

    def _check_first_mount(self, session: Session, name: str, path: str, sample: int = 200) -> None:
        """:class:`UsageError` when a name declared on this machine for the first time is not mounted at
        ``path``: most of the pictures the library holds under it (other machines indexed them) are not
        there. Indexing it would take them for deleted, for every machine."""
        prefix = f"{PREFIX}{name}/"
        held = session.scalars(select(ImageRow.path).where(ImageRow.path.startswith(prefix, autoescape=True))
                               .order_by(ImageRow.id).limit(sample)).all()
        missing = sum(not os.path.lexists(os.path.join(path, p[len(prefix):])) for p in held)
        if held and missing * 2 > len(held):
            raise UsageError(f"root name {name} is declared on this machine ({self.machine}) for the first time "
                             f"at {path}, but {missing} of {len(held)} pictures the library holds under it are "
                             "not there: is that where this machine mounts the share? (Indexing it would take "
                             "them for deleted, for every machine.)")

    def _check_not_foreign(self, session: Session, root: str) -> None:
        """:class:`UsageError` when ``root`` is stored by path and overlaps a folder another machine indexed
        by path: the same path on two machines is two folders (or one share without its name), and
        each run would take the other's pictures for changed or deleted."""
        stored = self.stored(root)
        if not self.lib.server or stored.startswith(PREFIX):
            return
        for path, owner in session.execute(select(RootRow.path, RootRow.machine)):
            if owner and owner != self.machine and not path.startswith(PREFIX) \
                    and (under(stored, path) or under(path, stored)):
                raise UsageError(
                    f"{root} overlaps {path}, a folder machine {owner!r} indexed by path: the same path on two "
                    f"machines must be indexed under a root name (--root-name NAME={root}; on {owner} too, if it "
                    f"is one shared folder; a name of its own for each, if they are different folders; if {owner} is "
                    f"this machine under a former name, run with CLIPDEX_MACHINE={owner})")

    def unreachable(self, paths: list[str], absent_too: bool = True) -> dict[tuple[str, str], int]:
        """Of pictures at ``paths`` (local forms), how many this machine cannot reach, by ``(kind, where in
        words)``: :data:`UNDECLARED` (a root name not declared here), :data:`FOREIGN` (another machine's
        folder) and, with ``absent_too``, :data:`ABSENT` (a folder of this machine's that is missing or
        empty now: an unmounted drive or share)."""
        rows = self._root_rows()
        mine = self._local_roots(rows)
        absent = {m for m in mine if absent_too and not _holds_anything(m)}
        theirs = [(p, owner) for p, owner in rows if not p.startswith(PREFIX) and not self._owns(owner)]
        out: dict[tuple[str, str], int] = {}
        for path in paths:
            inside = [m for m in mine if under(path, m)]
            if path.startswith(PREFIX):
                key = (UNDECLARED, f"under root name {path[len(PREFIX):].partition('/')[0]!r}, not declared here")
            elif inside:
                if not all(m in absent for m in inside):
                    continue
                key = (ABSENT, f"in {max(inside, key=len)}, missing or empty here (not mounted?)")
            else:
                owners = sorted({owner for p, owner in theirs if under(path, p)})
                if not owners:
                    continue
                key = (FOREIGN, f"in folders of machine {owners[0]!r}")
            out[key] = out.get(key, 0) + 1
        return out

    def absent_mounts(self) -> list[str]:
        """This machine's mount points of root names that are missing or empty now (unmounted shares)."""
        return [m for m in self.mounts().values() if not _holds_anything(m)]

    def _owns(self, owner: str | None) -> bool:
        """Whether a root stored by path and recorded with ``owner`` is this machine's (a root recorded before
        roots had machines counts as this one's; on SQLite, which one machine uses, every root does)."""
        return owner is None or owner == self.machine or not self.lib.server

    def _plain_roots(self, session: Session) -> list[str]:
        """This machine's roots stored as plain paths."""
        rows = session.execute(select(RootRow.path, RootRow.machine)).all()
        return [path for path, owner in rows if not path.startswith(PREFIX) and self._owns(owner)]

    def adopt(self, session: Session, name: str, mount: str) -> tuple[int, list[int]]:
        """Store this machine's pictures under ``mount`` by root ``name``, as indexing them now would.

        A folder indexed before its name was declared (or whose name was forgotten) then keeps its
        pictures, vectors and tags instead of being indexed a second time under the name. A picture
        the library already holds under the name too (another machine indexed the share) keeps that
        row; this one's tags move to it, and the duplicate is to go. Returns how many pictures were
        adopted and the ids of those duplicates, for the caller to forget, bumping the generation.
        """
        from clipdex.library import dialect

        plain = self._plain_roots(session)
        mounts = sorted({mount.rstrip(os.sep) or os.sep, os.path.realpath(mount)})  # and where a link leads
        owned = [r for r in plain if any(under(m, r) or under(r, m) for m in mounts)]
        rows: dict[int, tuple[str, str]] = {}  # id -> (the mount prefix it is under, its named form)
        skips = []
        for m in mounts:
            prefix = m.rstrip(os.sep) + os.sep
            found = session.execute(select(ImageRow.id, ImageRow.path)
                                    .where(ImageRow.path.startswith(prefix, autoescape=True))).all()
            rows.update((i, (prefix, PREFIX + name + p[len(prefix) - 1:])) for i, p in found
                        if any(under(p, r) for r in owned))
            skips += [p for p in session.scalars(select(SkippedRow.path)
                                                 .where(SkippedRow.path.startswith(prefix, autoescape=True)))
                      if any(under(p, r) for r in owned)]
        inside = [(r, m) for r in owned for m in mounts if under(r, m)]
        if not rows and not skips and not inside:
            return 0, []
        self.lib.need_exclusive()  # no other writer may store these paths in their old form meanwhile
        held: dict[str, int] = {}
        named = [n for _, n in rows.values()]
        for start in range(0, len(named), _CHUNK):
            held.update(session.execute(select(ImageRow.path, ImageRow.id)
                                        .where(ImageRow.path.in_(named[start:start + _CHUNK]))).all())
        gone = [i for i, (_, n) in rows.items() if n in held]
        for prefix in {p for p, _ in rows.values()}:  # the rest in bulk: "@name" + what follows the mount point
            ids = [i for i, (p, n) in rows.items() if p == prefix and n not in held]
            for start in range(0, len(ids), _CHUNK):
                session.execute(update(ImageRow).where(ImageRow.id.in_(ids[start:start + _CHUNK]))
                                .values(path=PREFIX + name + func.substr(ImageRow.path, len(prefix))))
        for image_id in gone:  # its tags join the twin's, unless the twin has them
            twin = held[rows[image_id][1]]
            for table in (TagRow, TagRejectionRow):
                have = {tuple(r) for r in session.execute(select(*_tag_key(table)).where(table.image_id == twin))}
                for row in session.scalars(select(table).where(table.image_id == image_id)).all():
                    if tuple(getattr(row, c.key) for c in _tag_key(table)) not in have:
                        row.image_id = twin
            session.flush()
        delete_in_chunks(session, SkippedRow.path, skips)  # the scan records them anew
        for root, m in inside:  # a root inside the mount point: now a named one
            session.execute(delete(RootRow).where(RootRow.path == root))
            dialect.upsert(session, RootRow, {"path": PREFIX + name + root[len(m.rstrip(os.sep)):],
                                              "added_at": utcnow(), "machine": None}, ["path"])
        return len(rows), gone

    def roots(self) -> list[str]:
        """The local paths of the roots pictures may be served from here: named roots declared on this
        machine, and this machine's own folders (on SQLite, which one machine uses, every folder)."""
        return self._local_roots(self._root_rows())

    def _root_rows(self) -> list[tuple[str, str | None]]:
        with self.lib.session() as s:
            return [tuple(r) for r in s.execute(select(RootRow.path, RootRow.machine))]

    def _local_roots(self, rows: list[tuple[str, str | None]]) -> list[str]:
        out = []
        for path, owner in rows:
            if path.startswith(PREFIX):
                local = self.local(path)
                if not local.startswith(PREFIX):
                    out.append(local)
            elif self._owns(owner):
                out.append(path)
        return out

    def elsewhere(self, local: str) -> str | None:
        """Why the picture at ``local`` (as :meth:`local` gives it) cannot be read on this machine, in
        words; None when it belongs here."""
        if local.startswith(PREFIX):
            name = local[len(PREFIX):].partition("/")[0]
            return (f"is under the shared root name {name!r}, which this machine ({self.machine}) has not "
                    f"declared: index with --root-name {name}=PATH where that share is mounted here")
        if not self.lib.server:  # one machine: every folder is its own
            return None
        owners = [(path, owner) for path, owner in self._root_rows() if owner and not path.startswith(PREFIX)
                  and under(local, path)]
        if owners and all(owner != self.machine for _, owner in owners):
            path, owner = max(owners, key=lambda r: len(r[0]))
            return (f"is in {path} on machine {owner!r}, not this one ({self.machine}); a folder that several "
                    "machines reach is shared by a root name (--root-name NAME=PATH on each)")
        return None

    def folder(self, path: str | Path) -> str:
        """``stored`` for a folder prefix (ends in a separator when ``path`` does)."""
        text = str(path)
        trailing = text.endswith(os.sep)
        stored = self.stored(text.rstrip(os.sep))
        return stored + os.sep if trailing and not stored.endswith(os.sep) else stored


def adopted_line(name: str, moved: int, merged: int) -> str:
    """What ``index`` says when a root name adopted pictures indexed by path."""
    joined = f" ({merged} of them merged with copies stored so already, their tags joined)" if merged else ""
    return f"{moved} pictures indexed by path are now stored under root name {name}{joined}, nothing re-encoded"


def _tag_key(table: type) -> tuple:
    """The columns that tell one picture's tags (or refusals) apart."""
    return (table.label, table.pass_id) if table is TagRow else (table.label,)
