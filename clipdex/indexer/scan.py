"""Walk image folders: what is on disk, and what could not be looked at and why."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from clipdex.errors import UsageError
from clipdex.imaging import is_image_path
from clipdex.library.paths import under


@dataclass
class FileFacts:
    size: int
    mtime: float


@dataclass
class Scan:
    """Image files found under the roots, and problems met on the way (path -> reason)."""

    roots: list[str]
    files: dict[str, FileFacts] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def covers(self, path: str) -> bool:
        """True when ``path`` lies under one of the scanned roots."""
        return any(under(path, r) for r in self.roots)


def displayable(path: str) -> str:
    """``path`` as text that can be stored and shown: bytes that are not UTF-8 appear as ``\\xff``.

    Python keeps such bytes in a ``str`` as lone surrogates (``os.fsdecode``), which SQLite
    and terminals refuse.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(path: str) -> bool:
    """False when ``path`` holds bytes that are not UTF-8 (lone surrogates in the ``str``)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalise_roots(paths: list[str | Path]) -> list[str]:
    """Absolute paths of existing roots; a missing root is an error, never 'everything deleted'."""
    roots = []
    for p in paths:
        path = os.path.abspath(os.path.expanduser(str(p)))
        if not is_utf8(path):
            raise UsageError(f"path name is not valid UTF-8, so the library cannot store it: {displayable(path)}")
        if not os.path.exists(path):
            raise UsageError(f"path not found: {p}")
        roots.append(path)
    return roots


def _add_file(scan: Scan, path: str) -> None:
    if not is_image_path(path):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        scan.problems[path] = "broken symlink" if os.path.islink(path) else "file disappeared"
        return
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            scan.problems[path] = "symlink loop"
        else:
            scan.problems[path] = f"cannot stat: {exc.strerror}"
        return
    if not stat.S_ISREG(st.st_mode):
        scan.problems[path] = "not a regular file"
        return
    scan.files[path] = FileFacts(st.st_size, st.st_mtime)


def scan(roots: list[str], exclude: list[str] | None = None) -> Scan:
    """Walk ``roots`` recursively, following directory symlinks but never in a loop.

    Hidden files and folders (``.name``) and anything under ``exclude`` are left out.
    """
    result = Scan(roots)
    excluded = {os.path.abspath(e) for e in exclude or []}
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        if os.path.isfile(root) or not os.path.isdir(root):
            _add_file(result, root)
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
            except OSError as exc:
                result.problems[folder] = "symlink loop" if exc.errno == 40 else f"cannot open folder: {exc.strerror}"
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                if os.path.islink(folder):
                    result.problems[folder] = "symlink loop (folder already visited)"
                continue
            seen_dirs.add(key)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except PermissionError:
                result.problems[folder] = "permission denied (folder)"
                continue
            except OSError as exc:
                result.problems[folder] = f"cannot open folder: {exc.strerror}"
                continue
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = entry.path
                if path in excluded:
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    is_dir = False
                if not is_utf8(entry.name):  # the library stores paths as text: record it, never retry it
                    shown = displayable(path)
                    if is_dir:
                        result.problems[shown] = "folder name is not valid UTF-8 (its pictures are left out)"
                    elif is_image_path(path):
                        result.problems[shown] = "file name is not valid UTF-8"
                    continue
                if is_dir:
                    subdirs.append(path)
                else:
                    _add_file(result, path)
            stack.extend(reversed(subdirs))
    return result
