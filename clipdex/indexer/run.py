"""Incremental indexing: scan, plan, decode, encode, store.

Every batch is one SQLite transaction holding the rows *and* their vectors, so killing
the process at any moment loses at most the batch in flight. Each commit logs the ids it
changed, so searches follow by delta; the index file is replaced (atomically) when the
policy of :mod:`clipdex.ann.policy` says so, during the run and at its end.
``--rebuild`` re-encodes beside the current vectors and swaps at the end (see
:mod:`clipdex.indexer.rebuild`), so the library answers searches throughout.
"""

from __future__ import annotations

import errno
import inspect
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from clipdex.decodepool import DecodeFn, DecodePool
from clipdex.decoding import Decoded, decode_file
from clipdex.errors import UsageError
from clipdex.indexer.gpu import cpu_redecoder, encode_batch
from clipdex.indexer.plan import Plan, make_plan
from clipdex.indexer.scan import Scan, normalise_roots, scan
from clipdex.library import Library, staging, writes
from clipdex.library.places import adopted_line
from clipdex.library.storage import DiskFull
from clipdex.library.writes import Failure, Picture
from clipdex.models import Encoder

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.indexer.distributed import RayOptions, RaySource

#: Stores one decoded batch: ``(decoded, vector)`` pairs and the failures.
StoreFn = Callable[[list[tuple[Decoded, np.ndarray]], list[Decoded]], None]


@dataclass
class IndexStats:
    """What one run did; ``clipdex index`` prints it and ``--json`` returns it.

    ``images_per_second`` is the files decoded and encoded (those the progress bar counts)
    divided by ``encode_seconds``, the time spent decoding and encoding them (what the bar
    measures); ``seconds`` is the whole run, scanning and model loading included.
    """

    indexed: int = 0
    encoded: int = 0
    reused: int = 0
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    images_per_second: float = 0.0
    rebuilt: bool = False  # a rebuild switched the library to the new vectors
    empty_roots: list[str] = field(default_factory=list)
    kept_empty: dict[str, int] = field(default_factory=dict)  # empty root -> indexed pictures kept under it
    skipped_files: dict[str, str] = field(default_factory=dict)
    backend: str | None = None  # what ran the model ("onnx" or "torch"), when it loaded
    backend_note: str | None = None  # why it is not ONNX Runtime, when it fell back
    index: dict | None = None  # the index file built by this run, if any (see clipdex.ann.build.BuildReport)
    processed: int = field(default=0, repr=False)

    def summary(self) -> str:
        head = (f"indexed {self.indexed} · unchanged {self.unchanged} · moved {self.moved} · "
                f"removed {self.removed} · skipped {self.skipped} · ")
        if not self.processed:
            return head + f"nothing to encode ({self.seconds:.1f}s)"
        return head + (f"{self.images_per_second:.1f} images/s over {self.encode_seconds:.1f}s of decoding and "
                       f"encoding ({self.seconds:.1f}s in all)")

    def notes(self) -> list[str]:
        """Lines worth a look besides the counts (folders holding no pictures)."""
        return [f"no pictures found in {root}" for root in self.empty_roots if root not in self.kept_empty]

    def warnings(self) -> list[str]:
        """Empty folders whose indexed pictures were kept, not removed (see ``Indexer.run``)."""
        return [f"{root} holds no pictures now; kept its {n} indexed pictures (is a drive unmounted?)"
                for root, n in self.kept_empty.items()]

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["processed"]
        return data


class Indexer:
    """Bring a library up to date with folders on disk.

    ``say`` receives one-line progress reports ("scanning ...", "loading model ...") as
    the run goes; ``progress`` shows a bar on stderr while files are encoded (default:
    when stderr is a terminal). ``gpu_jpeg``: decode JPEGs with torchvision where the model
    runs (see :mod:`clipdex.indexer.gpu`); None (the default) does when
    :attr:`Encoder.gpu_jpeg` says it can, True forces it (a PyTorch model on the CPU too).
    ``ray``: files are decoded and encoded on a Ray cluster (:mod:`clipdex.indexer.distributed`);
    scanning, planning and storing stay here, the same as without it.
    """

    def __init__(
        self,
        library: Library,
        model: str | Encoder | None = None,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        timeout: float = 60.0,
        device: str | None = None,
        backend: str | None = None,
        decode_fn: DecodeFn = decode_file,
        progress: bool | None = None,
        say: Callable[[str], None] | None = None,
        gpu_jpeg: bool | None = None,
        index_type: str | None = None,
        ray: RayOptions | None = None,
    ):
        self.lib = library
        self.requested = model
        self.batch_size = batch_size
        self.workers = workers
        self.timeout = timeout
        self.device = device
        self.backend = backend
        self.decode_fn = decode_fn
        self.gpu_jpeg = gpu_jpeg
        self.index_type = index_type  # auto, flat or ivf: recorded in the library by the run
        self.ray = ray  # decode and encode on a Ray cluster (see clipdex.indexer.distributed) instead of here
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.say = say or (lambda _line: None)
        self._announced: Encoder | None = None

    prune_empty = False

    def run(self, paths: list[str], rebuild: bool = False, prune_empty: bool = False,
            switch: bool = False) -> IndexStats:
        """Index ``paths`` (folders or files); returns what was done.

        ``switch``: a requested model other than the library's is not refused but built beside it
        (reusing what the library holds of it) while the current one answers, then switched to
        (see :mod:`clipdex.library.held`); ``rebuild`` re-encodes every picture, with any model.

        A path holding no picture at all keeps the pictures indexed under it (see
        ``IndexStats.kept_empty``) unless ``prune_empty``: an unmounted drive is not a deletion.

        A run that fails on a library it created leaves no library behind; one stopped by a
        full disk says how many pictures it committed (a new run continues from there).
        """
        start = time.monotonic()
        stats = self.stats = IndexStats()
        self.prune_empty = prune_empty
        self._staging = False  # set once the run encodes into the staging table (a rebuild, a model switch)
        try:
            with self.lib.write_lock():
                try:
                    self._run(paths, rebuild, stats, switch)
                except BaseException:
                    self.lib.discard_if_unused()
                    raise
        except DiskFull:
            raise DiskFull(self._disk_full(stats, self._staging)) from None
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise DiskFull(self._disk_full(stats, self._staging)) from None
        stats.seconds = time.monotonic() - start
        stats.images_per_second = stats.processed / stats.encode_seconds if stats.encode_seconds else 0.0
        return stats

    def _disk_full(self, stats: IndexStats, rebuild: bool) -> str:
        if rebuild and not stats.rebuilt:
            done = "the library still holds its previous vectors, and what was re-encoded so far is kept"
        else:
            done = f"{stats.indexed} pictures were indexed and committed before it filled up"
        return (f"the disk holding the library at {self.lib.path} is full: {done}; free some space and run the "
                "same indexing again to continue from there")

    def _run(self, paths: list[str], rebuild: bool, stats: IndexStats, switch: bool = False) -> None:
        roots = normalise_roots(paths)
        encoder = self.lib.encoder_for(self.requested, self.device, switching=rebuild or switch,
                                       backend=self.backend, bulk=True)
        stored = self.lib.model_spec
        switch = switch and not rebuild and stored is not None and encoder.spec.identity != stored.identity
        if not rebuild and not switch:
            unfinished = staging.pending(self.lib)
            if unfinished:
                self.say(f"(an unfinished rebuild with model {unfinished[0]} holds {unfinished[1]} re-encoded "
                         "pictures: rebuilding with that model again continues from there)")
            self._update(encoder, roots, stats)
            return
        from clipdex.indexer.rebuild import rebuild_library

        self._staging = True
        swapped = rebuild_library(self, encoder, Scan(roots), stats, reuse=switch)
        self._update(encoder, roots, stats, fresh=swapped.ids, fresh_skips=set(swapped.skipped))

    def use(self) -> IndexStats:
        """Switch the library to the model asked for, one it holds (``clipdex models use``): no folder is
        scanned; pictures that model lacks (indexed while it was not in use) are encoded, nothing else."""
        from clipdex.indexer.rebuild import rebuild_library
        from clipdex.library import held

        start = time.monotonic()
        stats = self.stats = IndexStats()
        with self.lib.write_lock():
            encoder = self.lib.encoder_for(self.requested, self.device, switching=True, backend=self.backend,
                                           bulk=True)
            entry = held.find(self.lib, encoder.spec.identity)
            if entry is None or (not entry.active and entry.dim is None):
                raise UsageError(f"this library holds no vectors of model {encoder.spec}: build them with "
                                 f"clipdex index PATH --model {encoder.spec}")
            if not entry.active:
                rebuild_library(self, encoder, Scan([]), stats, reuse=True)
                self.maintain_index(final=True)
        stats.seconds = time.monotonic() - start
        stats.images_per_second = stats.processed / stats.encode_seconds if stats.encode_seconds else 0.0
        return stats

    def load_model(self, encoder: Encoder) -> None:
        """Load the model, saying so the first time (it can take a while), and which backend runs it."""
        if encoder is not self._announced:
            self.say(f"loading model {encoder.spec} …")
            self._announced = encoder
        encoder.load(self.say)
        self.stats.backend, self.stats.backend_note = encoder.backend, encoder.note

    def _update(self, encoder: Encoder, roots: list[str], stats: IndexStats, fresh: Collection[int] = (),
                fresh_skips: Collection[str] | None = None) -> None:
        """The incremental pass over ``roots``.

        After a rebuild, ``fresh`` pictures were just re-encoded (they are not "unchanged")
        and of the files skipped before only ``fresh_skips``, just found unusable, are not
        tried again: a rebuild gives every other skipped file another chance.
        """
        self.say(f"scanning {', '.join(roots)} …")
        for name, counts in self.lib.add_roots(roots).items():
            self.say(adopted_line(name, *counts))
        found = scan(roots, exclude=[str(self.lib.path)])
        skipped = writes.skipped_facts(self.lib, found.covers)
        if fresh_skips is not None:
            skipped = {path: facts for path, facts in skipped.items() if path in fresh_skips}
        plan = make_plan(found, writes.known_rows(self.lib, found.covers, self.lib.places.absent_mounts()), skipped,
                         prune_empty=self.prune_empty)
        self.say(plan.describe())
        stats.unchanged = len(set(plan.unchanged_ids).difference(fresh))
        stats.moved = len(plan.moves)
        stats.empty_roots = [r for r in roots if not any(Scan([r]).covers(p) for p in found.files)]
        stats.kept_empty = plan.kept_empty
        pool = None
        if plan.todo:  # workers start while the model loads
            pool = self.decode_pool(encoder, len(plan.todo))
        try:
            if plan.todo or self.lib.dim is None:
                self.load_model(encoder)
                if self.lib.model_spec is None:
                    with self.lib.session() as s:
                        self.lib.bind_model(s, encoder.spec, encoder.dim)
                        s.commit()
            moves = [(i, p, found.files[p].size, found.files[p].mtime) for i, p in plan.moves + plan.touched]
            writes.apply_moves_and_removals(self.lib, moves, plan.removed_ids)
            stats.removed += len(plan.removed_ids)
            writes.record_scan_problems(self.lib, found.covers, found.files.__contains__, found.problems)
            stats.skipped += len(found.problems)
            stats.skipped_files.update(found.problems)
            if pool is not None:
                self._index_files(encoder, pool, plan, found, stats)
            self.maintain_index(final=True)
        finally:
            if pool is not None:
                pool.close()

    def maintain_index(self, final: bool = False) -> None:
        """Replace the index file when the policy says so (``final``: the end of a run); say what was built."""
        if self.index_type is not None:
            self.lib.keeper.set_kind(self.index_type)
        report = self.lib.keeper.maintain(self.say, final=final)
        if report is not None:
            self.stats.index = report.as_dict()
            if report.kind == "ivf":
                self.say(f"built an IVF index of {report.count:,} pictures ({report.nlist} lists, nprobe "
                         f"{report.nprobe}, measured recall@10 {report.recall_at_10:.3f}) in {report.seconds:.1f}s")

    def decode_pool(self, encoder: Encoder, count: int) -> DecodePool | RaySource:
        """Where files are decoded and encoded: local worker processes, started now (they start while the
        model loads), or a Ray cluster (``ray``), connected to now."""
        if self.ray is None:
            return DecodePool(self.workers, self.timeout, decode_fn=self.decode_fn).start(count)
        from clipdex.indexer.distributed import RaySource

        return RaySource(self.ray, encoder, self.decode_fn, self.batch_size, self.timeout, self.say).start()

    def decodes_jpegs_on_device(self, encoder: Encoder) -> bool:
        """Whether this run hands JPEGs to ``encoder`` as bytes (the model is loaded)."""
        if self.ray is not None:  # the cluster's CPU tasks decode every file
            return False
        takes_bytes = "jpeg_bytes" in inspect.signature(self.decode_fn).parameters
        if self.gpu_jpeg is None:
            return takes_bytes and encoder.gpu_jpeg
        if self.gpu_jpeg and not (takes_bytes and encoder.backend == "torch"):
            raise UsageError("decoding JPEGs with torchvision needs the PyTorch backend and a decode_fn taking "
                             "jpeg_bytes")
        return self.gpu_jpeg

    def _index_files(self, encoder: Encoder, pool: DecodePool | RaySource, plan: Plan, found: Scan,
                     stats: IndexStats) -> None:
        by_hash = writes.content_hashes(self.lib)  # identical content already encoded (a copy) keeps its vector
        hash_of = {image_id: h for h, image_id in by_hash.items()}

        def forget_hash(image_id: int) -> None:  # that row now holds other content, or is gone
            h = hash_of.pop(image_id, None)
            if h is not None and by_hash.get(h) == image_id:
                del by_hash[h]

        def store(done: list[tuple[Decoded, np.ndarray]], failed: list[Decoded]) -> None:
            pictures = [Picture(d.path, found.files[d.path].size, found.files[d.path].mtime, d.content_hash, d.width,
                                d.height, d.captured_at, v, plan.changed_ids.get(d.path)) for d, v in done]
            failures = [Failure(d.path, d.error or "", *_facts(found, d.path)) for d in failed]
            gone = [plan.changed_ids[d.path] for d in failed if d.path in plan.changed_ids]
            ids = writes.store_batch(self.lib, pictures, failures, gone)
            for image_id in gone + [p.image_id for p in pictures if p.image_id is not None]:
                forget_hash(image_id)
            for image_id, p in zip(ids, pictures):
                if by_hash.setdefault(p.content_hash, image_id) == image_id:
                    hash_of[image_id] = p.content_hash
            stats.indexed += len(pictures)
            stats.skipped += len(failed)
            stats.skipped_files.update({d.path: d.error or "" for d in failed})
            self.maintain_index()

        self.encode_stream(encoder, pool, plan.todo, "indexing", by_hash, self._stored_vectors, store, stats)

    def _stored_vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        got, vectors = self.lib.load_vectors(ids)
        return dict(zip(got.tolist(), vectors))

    def encode_stream(
        self,
        encoder: Encoder,
        pool: DecodePool | RaySource,
        paths: list[str],
        desc: str,
        by_hash: dict[str, int],
        vectors_of: Callable[[list[int]], dict[int, np.ndarray]],
        store: StoreFn,
        stats: IndexStats,
    ) -> None:
        """Decode ``paths`` in the pool, encode them in batches and hand each batch to ``store``.

        A file whose content hash is in ``by_hash`` reuses that picture's vector
        (``vectors_of``) instead of being encoded. The time spent here, and the files, go
        into ``stats`` as the bar shows them.
        """
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), unit="img", desc=desc, file=sys.stderr, smoothing=0)
        began = bar.start_t if bar is not None else time.time()
        size, mode = encoder.image_size, encoder.resize_mode
        on_device = self.decodes_jpegs_on_device(encoder)
        if on_device and encoder.gpu_jpeg:
            self.say("decoding JPEGs on the GPU (nvJPEG)")
        redecode = cpu_redecoder(self.decode_fn, self.timeout, size, mode)
        encode = getattr(pool, "encode_batch", None) or (lambda todo: encode_batch(encoder, todo, redecode))
        batches = pool.run(paths, size, mode, chunk=self.batch_size, jpeg_bytes=on_device)
        try:
            for items in batches:
                ok = [d for d in items if not d.error]
                # Copies of stored pictures take their vector; the rest (new content, or a
                # picture whose vector is no longer there) are encoded.
                reuse = sorted({by_hash[d.content_hash] for d in ok if d.content_hash in by_hash})
                known = vectors_of(reuse) if reuse else {}
                vectors: dict[str, np.ndarray] = {}
                for d in ok:
                    source = by_hash.get(d.content_hash)
                    if source is not None and source in known:
                        vectors[d.path] = known[source]
                to_encode = [d for d in ok if d.path not in vectors]
                # JPEG bytes are decoded where the model runs; one that fails there is decoded
                # again on the CPU, and lands in ``failed`` with that decoder's reason if it fails.
                encoded, failed = encode(to_encode) if to_encode else ([], [])
                now = {d.path: d for d, _ in encoded}
                vectors.update({d.path: v for d, v in encoded})
                store([(now.get(d.path, d), vectors[d.path]) for d in ok if d.path in vectors],
                      [d for d in items if d.error] + failed)
                stats.encoded += len(encoded)
                stats.reused += len(ok) - len(to_encode)
                stats.processed += len(items)
                if bar is not None:
                    bar.update(len(items))
        finally:
            batches.close()  # on an error too, the workers stop now, not whenever the traceback is freed
            if bar is not None:
                bar.close()  # its last line shows processed / (now - start), as the summary does
            stats.encode_seconds += time.time() - began


def _facts(found: Scan, path: str) -> tuple[int, float]:
    facts = found.files.get(path)
    return (facts.size, facts.mtime) if facts else (-1, -1.0)
