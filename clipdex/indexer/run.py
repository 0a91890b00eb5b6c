"""Incremental indexing: scan, plan, decode, encode, store.

Every batch is one SQLite transaction holding the rows *and* their vectors, so killing
the process at any moment loses at most the batch in flight; the FAISS index is saved
(atomically) at the end of the run, and a stale one is rebuilt from SQLite on next use.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from sqlalchemy import delete, select

from clipdex.decodepool import Decoded, DecodeFn, DecodePool, decode_file, hash_file
from clipdex.indexer.scan import Scan, normalise_roots, scan
from clipdex.library import Library
from clipdex.library.schema import ImageRow, SkippedRow, TagRow, utcnow
from clipdex.models import Encoder
from clipdex.vectorindex import VectorIndex


@dataclass
class IndexStats:
    """What one run did; ``clipdex index`` prints it and ``--json`` returns it."""

    indexed: int = 0
    encoded: int = 0
    reused: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    skipped_files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"indexed {self.indexed} · unchanged {self.unchanged} · moved {self.moved} · "
            f"removed {self.removed} · skipped {self.skipped} · "
            f"{self.images_per_second:.1f} images/s ({self.seconds:.1f}s)"
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    todo: list[str]
    changed_ids: dict[str, int]
    unchanged: int
    moves: list[tuple[int, str]]
    removed_ids: list[int]


def _plan(lib: Library, found: Scan, rebuild: bool) -> _Plan:
    with lib.session() as s:
        rows = [r for r in s.execute(select(ImageRow.id, ImageRow.path, ImageRow.size, ImageRow.mtime,
                                             ImageRow.content_hash)).all() if found.covers(r.path)]
        bad = {r.path: (r.size, r.mtime) for r in s.execute(select(SkippedRow)).scalars() if found.covers(r.path)}
    known = {r.path: r for r in rows}
    todo: list[str] = []
    changed: dict[str, int] = {}
    unchanged = 0
    for path, facts in found.files.items():
        row = known.get(path)
        if row is None:
            if not rebuild and bad.get(path) == (facts.size, facts.mtime):
                continue  # still the same bad file: don't retry it every run
            todo.append(path)
        elif rebuild or row.size != facts.size or row.mtime != facts.mtime:
            todo.append(path)
            changed[path] = row.id
        else:
            unchanged += 1
    vanished = {r.id: r for r in rows if r.path not in found.files}
    moves = [] if rebuild else _find_moves(todo, changed, found, vanished)
    moved_paths = {path for _, path in moves}
    todo = [p for p in todo if p not in moved_paths]
    return _Plan(todo, changed, unchanged, moves, list(vanished))


def _find_moves(todo: list[str], changed: dict[str, int], found: Scan, vanished: dict) -> list[tuple[int, str]]:
    """Pair new files with vanished rows of the same size and content hash; removes paired rows."""
    by_hash_size: dict[tuple[int, str], list[int]] = {}
    for r in vanished.values():
        by_hash_size.setdefault((r.size, r.content_hash), []).append(r.id)
    sizes = {size for size, _ in by_hash_size}
    moves: list[tuple[int, str]] = []
    for path in todo:
        size = found.files[path].size
        if path in changed or size not in sizes:
            continue  # only a file of a vanished picture's size can be that picture
        try:
            candidates = by_hash_size.get((size, hash_file(path)))
        except OSError:
            continue
        if candidates:
            image_id = candidates.pop()
            moves.append((image_id, path))
            del vanished[image_id]
    return moves


class Indexer:
    """Bring a library up to date with folders on disk."""

    def __init__(
        self,
        library: Library,
        model: str | Encoder | None = None,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        timeout: float = 60.0,
        device: str | None = None,
        decode_fn: DecodeFn = decode_file,
        progress: bool | None = None,
    ):
        self.lib = library
        self.requested = model
        self.batch_size = batch_size
        self.workers = workers
        self.timeout = timeout
        self.device = device
        self.decode_fn = decode_fn
        self.progress = sys.stderr.isatty() if progress is None else progress

    def run(self, paths: list[str], rebuild: bool = False) -> IndexStats:
        """Index ``paths`` (folders or files); returns what was done."""
        start = time.monotonic()
        roots = normalise_roots(paths)
        with self.lib.write_lock():
            encoder = self.lib.encoder_for(self.requested, self.device, switching=rebuild)
            stored = self.lib.model_spec
            if rebuild and stored is not None and stored.identity != encoder.spec.identity:
                self._wipe()
            self.lib.add_roots(roots)
            found = scan(roots, exclude=[str(self.lib.path)])
            plan = _plan(self.lib, found, rebuild)
            stats = IndexStats(unchanged=plan.unchanged, moved=len(plan.moves))
            pool = None
            if plan.todo:  # workers start while the model loads
                pool = DecodePool(self.workers, self.timeout, decode_fn=self.decode_fn).start(len(plan.todo))
            try:
                if plan.todo or self.lib.dim is None:
                    encoder.load()
                    with self.lib.session() as s:
                        self.lib.bind_model(s, encoder.spec, encoder.dim)
                        s.commit()
                index = self.lib.index() if self.lib.dim is not None else None
                self._apply_moves_and_removals(plan, found, index, stats)
                self._record_problems(found, stats)
                if pool is not None:
                    self._encode_all(encoder, pool, plan, found, index, stats, reuse=not rebuild)
                if index is not None:
                    self.lib.adopt_index(index, self.lib.generation)
            finally:
                if pool is not None:
                    pool.close()
        stats.seconds = time.monotonic() - start
        stats.images_per_second = stats.indexed / stats.seconds if stats.seconds else 0.0
        return stats

    def _wipe(self) -> None:
        with self.lib.session() as s:
            s.execute(delete(ImageRow))
            s.execute(delete(SkippedRow))
            self.lib.bump_generation(s)
            s.commit()
        self.lib.reset_index()

    def _apply_moves_and_removals(
        self, plan: _Plan, found: Scan, index: VectorIndex | None, stats: IndexStats
    ) -> None:
        if not plan.moves and not plan.removed_ids:
            return
        with self.lib.session() as s:
            for image_id, path in plan.moves:
                row = s.get(ImageRow, image_id)
                row.path, row.size, row.mtime = path, found.files[path].size, found.files[path].mtime
            if plan.removed_ids:
                self.lib.forget(s, plan.removed_ids)
                self.lib.bump_generation(s)
            s.commit()
        if index is not None:
            index.remove(plan.removed_ids)
        stats.removed = len(plan.removed_ids)

    def _record_problems(self, found: Scan, stats: IndexStats) -> None:
        """Record what the scan could not look at; forget old skips of files now gone."""
        with self.lib.session() as s:
            stale = [p for p in s.scalars(select(SkippedRow.path))
                     if found.covers(p) and p not in found.files and p not in found.problems]
            for start in range(0, len(stale), 500):
                s.execute(delete(SkippedRow).where(SkippedRow.path.in_(stale[start:start + 500])))
            for path, reason in found.problems.items():
                s.merge(SkippedRow(path=path, reason=reason, recorded_at=utcnow()))
            s.commit()
        stats.skipped += len(found.problems)
        stats.skipped_files.update(found.problems)

    def _encode_all(
        self, encoder: Encoder, pool: DecodePool, plan: _Plan, found: Scan, index: VectorIndex,
        stats: IndexStats, reuse: bool,
    ) -> None:
        by_hash: dict[str, int] = {}
        if reuse:  # identical content already encoded (a copy) keeps its vector
            with self.lib.session() as s:
                by_hash = dict(s.execute(select(ImageRow.content_hash, ImageRow.id)).all())
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(plan.todo), unit="img", desc="indexing", file=sys.stderr)
        for items in pool.run(plan.todo, encoder.image_size, encoder.resize_mode, chunk=self.batch_size):
            batch = [d for d in items if not d.error]
            failed = [d for d in items if d.error]
            self._store(encoder, batch, failed, plan, found, index, by_hash, stats)
            if bar:
                bar.update(len(items))
        if bar:
            bar.close()

    def _store(
        self,
        encoder: Encoder,
        batch: list[Decoded],
        failed: list[Decoded],
        plan: _Plan,
        found: Scan,
        index: VectorIndex,
        by_hash: dict[str, int],
        stats: IndexStats,
    ) -> None:
        """Encode one batch and commit it (rows, vectors, skips) in a single transaction."""
        to_encode = [d for d in batch if d.content_hash not in by_hash]
        vectors: dict[str, np.ndarray] = {}
        if to_encode:
            encoded = encoder.encode_pixels(np.stack([d.pixels for d in to_encode]))
            vectors.update({d.path: v for d, v in zip(to_encode, encoded)})
        reuse_ids = {by_hash[d.content_hash] for d in batch if d.content_hash in by_hash}
        if reuse_ids:
            ids, vecs = self.lib.load_vectors(sorted(reuse_ids))
            known = dict(zip(ids.tolist(), vecs))
            for d in batch:
                if d.path not in vectors:
                    vectors[d.path] = known[by_hash[d.content_hash]]
        now = utcnow()
        written: list[ImageRow] = []
        with self.lib.session() as s:
            for d in batch:
                facts = found.files[d.path]
                row = s.get(ImageRow, plan.changed_ids[d.path]) if d.path in plan.changed_ids else None
                if row is None:
                    row = ImageRow(path=d.path)
                    s.add(row)
                else:
                    s.execute(delete(TagRow).where(TagRow.image_id == row.id))
                row.size, row.mtime, row.content_hash = facts.size, facts.mtime, d.content_hash
                row.width, row.height, row.captured_at = d.width, d.height, d.captured_at
                row.indexed_at, row.vector = now, vectors[d.path].astype(np.float32).tobytes()
                written.append(row)
            s.execute(delete(SkippedRow).where(SkippedRow.path.in_([d.path for d in batch])))
            gone = [plan.changed_ids[d.path] for d in failed if d.path in plan.changed_ids]
            if gone:
                self.lib.forget(s, gone)
            for d in failed:
                facts = found.files.get(d.path)
                s.merge(SkippedRow(path=d.path, reason=d.error, size=facts.size if facts else -1,
                                   mtime=facts.mtime if facts else -1.0, recorded_at=now))
            self.lib.bump_generation(s)
            s.commit()
        replaced = [plan.changed_ids[d.path] for d in batch if d.path in plan.changed_ids]
        index.remove(replaced + gone)
        if written:
            index.add([r.id for r in written], np.stack([vectors[r.path] for r in written]))
        for r in written:
            by_hash.setdefault(r.content_hash, r.id)
        stats.indexed += len(batch)
        stats.encoded += len(to_encode)
        stats.reused += len(batch) - len(to_encode)
        stats.skipped += len(failed)
        stats.skipped_files.update({d.path: d.error or "" for d in failed})
