"""Planning a run: compare what is on disk with what the library holds.

Pure: it takes a :class:`~clipdex.indexer.scan.Scan`, the library's rows under the scanned
folders and its skip list, and says what to encode, what moved and what went away. Only
move detection reads files (their content hash), through ``hash_fn``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clipdex.decoding import hash_file
from clipdex.indexer.scan import Scan
from clipdex.library.writes import KnownRow


@dataclass
class Plan:
    """What one run will do under the scanned folders."""

    todo: list[str]                   # new and changed files to decode and encode
    changed_ids: dict[str, int]       # path -> id of the row a changed file replaces
    unchanged_ids: list[int]          # rows whose file has the same size and mtime (or only a new mtime)
    moves: list[tuple[int, str]]      # (id, new path): a vanished picture found elsewhere
    removed_ids: list[int]            # rows whose file is gone
    touched: list[tuple[int, str]] = field(default_factory=list)  # (id, path): new mtime, same bytes
    kept_empty: dict[str, int] = field(default_factory=dict)      # empty root -> pictures kept under it

    @property
    def new(self) -> int:
        return len(self.todo) - len(self.changed_ids)

    @property
    def unchanged(self) -> int:
        return len(self.unchanged_ids)

    def describe(self) -> str:
        """One line for the user: how the files on disk compare with the library."""
        found = len(self.todo) + self.unchanged + len(self.moves)
        return (f"found {found} pictures: {self.new} new, {len(self.changed_ids)} changed, {self.unchanged} unchanged, "
                f"{len(self.moves)} moved; {len(self.removed_ids)} gone from the library")


def make_plan(
    found: Scan,
    known: Iterable[KnownRow],
    skipped: dict[str, tuple[int, float]],
    *,
    hash_fn: Callable[[str], str] = hash_file,
    prune_empty: bool = False,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> Plan:
    """Plan a run from a scan and the library's rows and skips (only those under ``found.roots`` count).

    A file in ``skipped`` is not retried while its size and mtime are the ones recorded
    there. A new file with the size and content hash of a vanished row is that picture,
    moved: it keeps its id and vector. A file whose mtime changed but whose size and
    content hash did not (touched, restored from a backup) is ``touched``: it keeps its
    row, vector and tags. A root holding no picture file at all while the library holds
    pictures under it (an unmounted drive's mount point), or a folder under a root that
    still exists but holds no picture now, loses none of them unless ``prune_empty``:
    they are counted in ``kept_empty`` instead of removed.
    """
    rows = [r for r in known if found.covers(r.path)]
    by_path = {r.path: r for r in rows}
    todo: list[str] = []
    changed: dict[str, int] = {}
    unchanged: list[int] = []
    touched: list[tuple[int, str]] = []
    for path, facts in found.files.items():
        row = by_path.get(path)
        if row is None:
            if skipped.get(path) == (facts.size, facts.mtime):
                continue  # still the same bad file: don't retry it every run
            todo.append(path)
        elif row.size != facts.size or row.mtime != facts.mtime:
            if row.size == facts.size and same_content(path, row.content_hash, hash_fn):
                unchanged.append(row.id)
                touched.append((row.id, path))
                continue
            todo.append(path)
            changed[path] = row.id
        else:
            unchanged.append(row.id)
    vanished = {r.id: r for r in rows if r.path not in found.files}
    moves = find_moves(todo, changed, found, vanished, hash_fn)
    moved_paths = {path for _, path in moves}
    todo = [p for p in todo if p not in moved_paths]
    kept_empty: dict[str, int] = {}
    if not prune_empty:
        for root in found.roots:
            under = Scan([root])
            if any(under.covers(p) for p in found.files):
                continue
            kept = [i for i, r in vanished.items() if under.covers(r.path)]
            if kept:
                kept_empty[root] = len(kept)
                for i in kept:
                    del vanished[i]
        _keep_emptied_folders(found, vanished, kept_empty, is_dir)
    return Plan(todo, changed, unchanged, moves, list(vanished), touched, kept_empty)


def _keep_emptied_folders(found: Scan, vanished: dict, kept_empty: dict[str, int], is_dir: Callable[[str], bool]
                          ) -> None:
    """Keep vanished pictures whose nearest existing folder under a root now holds no picture.

    That is what a drive unmounted from a mount point inside an indexed folder looks like
    (and a folder emptied on purpose, which ``prune_empty`` then removes): a folder deleted
    whole leaves its nearest existing folder holding other pictures, and its pictures go.
    """
    holding: set[str] = set()  # every folder with a picture somewhere beneath it
    for path in found.files:
        folder = os.path.dirname(path)
        while folder not in holding:
            holding.add(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    nearest: dict[str, str | None] = {}
    for image_id, row in list(vanished.items()):
        start = os.path.dirname(row.path)
        if start not in nearest:
            folder = start
            while found.covers(folder) and not is_dir(folder):
                folder = os.path.dirname(folder)
            nearest[start] = folder if found.covers(folder) and folder not in holding else None
        if nearest[start] is not None:
            kept_empty[nearest[start]] = kept_empty.get(nearest[start], 0) + 1
            del vanished[image_id]


def same_content(path: str, content_hash: str, hash_fn: Callable[[str], str]) -> bool:
    """True when the file at ``path`` still holds the content hashed as ``content_hash``."""
    try:
        return hash_fn(path) == content_hash
    except OSError:
        return False


def find_moves(
    todo: list[str], changed: dict[str, int], found: Scan, vanished: dict[int, KnownRow],
    hash_fn: Callable[[str], str] = hash_file,
) -> list[tuple[int, str]]:
    """Pair new files with vanished rows of the same size and content hash; paired rows leave ``vanished``.

    Only a new file of a vanished picture's size is hashed, so a run with nothing vanished
    reads no file here.
    """
    by_hash_size: dict[tuple[int, str], list[int]] = {}
    for r in vanished.values():
        by_hash_size.setdefault((r.size, r.content_hash), []).append(r.id)
    sizes = {size for size, _ in by_hash_size}
    moves: list[tuple[int, str]] = []
    for path in todo:
        size = found.files[path].size
        if path in changed or size not in sizes:
            continue
        try:
            candidates = by_hash_size.get((size, hash_fn(path)))
        except OSError:
            continue
        if candidates:
            image_id = candidates.pop()
            moves.append((image_id, path))
            del vanished[image_id]
    return moves
