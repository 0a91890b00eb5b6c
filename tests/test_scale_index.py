"""Large-library indexing: readers follow writers by delta, the index type follows the collection,
IVF answers with measured recall, filters stay exact, and builds survive being killed.

Libraries here are filled through the project's own storage code (``writes.store_batch``)
with clustered synthetic vectors (:func:`clipdex.ann.synthetic.clip_like_vectors`), small
enough to build in a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import text

from clipdex.ann import gpu, policy
from clipdex.ann.base import index_files
from clipdex.ann.ivffile import check_ivf_file
from clipdex.ann.synthetic import clip_like_vectors
from clipdex.library import Library, writes
from clipdex.library.writes import Picture
from clipdex.models import parse_model_spec
from tests.conftest import BOTH

BACKENDS = BOTH  # the tests taking library_at run on SQLite and on PostgreSQL; those about files, on SQLite
DIM = 128


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.concatenate(list(clip_like_vectors(n, DIM, seed=seed, clusters=60)))


def pictures(xs: np.ndarray, first: int, replacing: list[int] | None = None) -> list[Picture]:
    return [Picture(f"/photos/{first + n:07d}.jpg", 1, 0.0, f"{first + n:064x}", 8, 8, None, v,
                    replacing[n] if replacing else None) for n, v in enumerate(xs)]


def new_library(where: Path | str, xs: np.ndarray, batch: int = 5000) -> Library:
    """A library at ``where`` (a folder or a database URL) holding ``xs`` as its pictures' vectors."""
    lib = Library.create(where)
    with lib.session() as s:
        lib.bind_model(s, parse_model_spec("ViT-B-32:synthetic"), DIM)
        s.commit()
    for start in range(0, len(xs), batch):
        writes.store_batch(lib, pictures(xs[start:start + batch], start), [], [])
    return lib


def exact(lib: Library, query: np.ndarray, k: int, allowed: np.ndarray | None = None,
          loaded: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
    """The true top ``k`` ids for ``query`` (of ``loaded``, the library's ids and vectors, if read already)."""
    ids, vecs = loaded if loaded is not None else lib.load_vectors()
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vecs = ids[keep], vecs[keep]
    scores = vecs @ query
    return [int(ids[i]) for i in np.lexsort((ids, -scores))[:k]]


def found(lib: Library, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[int]:
    return [i for i, _ in lib.index().search(query, k, allowed)]


def maintain(lib: Library, final: bool = True):
    with lib.write_lock():
        return lib.keeper.maintain(final=final)


def test_a_reader_follows_adds_changes_moves_and_deletes_by_delta(library_at):
    xs = vectors(3000)
    writer = new_library(library_at, xs[:2000])
    maintain(writer)
    reader = Library.open(library_at)
    before = reader.index()
    held = before.generation

    added = writes.store_batch(writer, pictures(xs[2000:2032], 2000), [], [])  # one 32-picture batch
    changed = [5, 6]
    writes.store_batch(writer, pictures(xs[2100:2102], 2100, replacing=changed), [], [])
    writes.apply_moves_and_removals(writer, [(7, "/photos/moved.jpg", 1, 0.0)], [8, 9, 10])

    after = reader.index()
    assert after.generation == writer.generation > held
    assert after.base is before.base  # caught up by delta, not reloaded
    assert after.ntotal == 2000 + 32 - 3
    assert set(after.ids().tolist()) == set(writer.load_vectors()[0].tolist())
    for q in (xs[2010], xs[2100], xs[7], xs[8], xs[100]):
        assert found(reader, q, 10) == exact(writer, q, 10)
    assert found(reader, xs[2010], 1) == [added[10]]
    assert found(reader, xs[2100], 1) == [5]  # the changed picture answers with its new vector
    assert 8 not in found(reader, xs[8], 10)


def test_each_commit_logs_exactly_the_ids_it_changed(library_at):
    lib = new_library(library_at, vectors(40))
    from clipdex.library.changes import latest_ids

    ids = writes.store_batch(lib, pictures(vectors(3, seed=2), 100), [], [])
    with lib.session() as s:
        assert sorted(latest_ids(s, lib.generation)) == sorted(ids)
    writes.apply_moves_and_removals(lib, [], [1, 2])
    with lib.session() as s:
        assert sorted(latest_ids(s, lib.generation)) == [1, 2]


def test_a_reader_behind_a_pruned_log_loads_the_new_base(monkeypatch, library_at):
    monkeypatch.setattr(policy, "COMPACT_MIN", 10)
    xs = vectors(1500)
    writer = new_library(library_at, xs[:1000])
    maintain(writer)
    reader = Library.open(library_at)
    old = reader.index()
    for start in (1000, 1150, 1300):  # three compactions: the log the reader needs is pruned
        writes.store_batch(writer, pictures(xs[start:start + 150], start), [], [])
        assert maintain(writer, final=False) is not None
    now = reader.index()
    assert now.base is not old.base and now.ntotal == 1450
    assert found(reader, xs[1400], 5) == exact(writer, xs[1400], 5)
    assert len(index_files(writer.path)) == 1


@pytest.mark.parametrize("value", ["garbage", "999999"])
def test_a_damaged_changes_from_is_healed_not_rebuilt_forever(value, library_at):
    """A log start no commit can have written (not a number, past the generation) once made every
    reader rebuild in an endless recursion and every writer on every batch."""
    xs = vectors(3100)
    lib = new_library(library_at, xs[:3000])
    lib.keeper.set_kind("ivf")
    maintain(lib)
    with lib.session() as s:
        lib.set_meta(s, "changes_from", value)
        s.commit()
    reader = Library.open(lib.location)
    assert reader.index().ids().tolist() == reader.load_vectors()[0].tolist()
    assert int(reader.get_meta("changes_from")) <= reader.generation  # the reader's own install healed it
    writes.store_batch(lib, pictures(xs[3000:3010], 3000), [], [])  # and readers follow by delta again
    assert found(reader, xs[3005], 1) == [3006] and reader.index().base is not None
    with lib.session() as s:
        lib.set_meta(s, "changes_from", value)
        s.commit()
    assert maintain(lib) is not None and maintain(lib) is None  # a writer heals it once, then rests
    assert int(lib.get_meta("changes_from")) <= lib.generation


def test_a_change_log_that_lost_rows_is_noticed_and_the_index_rebuilt(library_at):
    xs = vectors(3010)
    lib = new_library(library_at, xs[:3000])
    maintain(lib)
    writes.apply_moves_and_removals(lib, [], [1, 2, 3])
    writes.store_batch(lib, pictures(xs[3000:3010], 3000), [], [])
    with lib.session() as s:
        s.execute(text("DELETE FROM vector_changes"))  # rows lost, changes_from untouched
        s.commit()
    reader = Library.open(lib.location)
    assert reader.index().ids().tolist() == reader.load_vectors()[0].tolist()
    assert found(reader, xs[3004], 1) == [3005] and 1 not in found(reader, xs[0], 5)
    with lib.session() as s:  # the same loss seen by a writer at the end of a run
        s.execute(text("DELETE FROM vector_changes"))
        s.commit()
    writes.apply_moves_and_removals(lib, [], [4])
    with lib.session() as s:
        s.execute(text("DELETE FROM vector_changes"))
        s.commit()
    assert maintain(lib) is not None
    assert Library.open(lib.location).index().ids().tolist() == lib.load_vectors()[0].tolist()


def test_the_index_type_follows_the_collection_and_retrains_when_it_doubles(monkeypatch, library_at):
    monkeypatch.setattr(policy, "IVF_FROM", 3000)
    monkeypatch.setattr(policy, "COMPACT_MIN", 10)
    xs = vectors(9000, seed=1)
    lib = new_library(library_at, xs[:2000])
    assert maintain(lib).kind == "flat"
    writes.store_batch(lib, pictures(xs[2000:3500], 2000), [], [])
    report = maintain(lib)
    assert (report.kind, report.trained_on) == ("ivf", 3500)
    assert report.recall_at_10 >= policy.RECALL_TARGET and report.nprobe >= 1
    info = lib.info()
    assert (info["index_type"], info["index_setting"], info["index_nprobe"]) == ("ivf", "auto", report.nprobe)

    writes.store_batch(lib, pictures(xs[3500:5000], 3500), [], [])  # grown by 43 %: refilled, not retrained
    report = maintain(lib, final=False)
    assert (report.kind, report.trained_on, report.count) == ("ivf", 3500, 5000)
    writes.store_batch(lib, pictures(xs[5000:7100], 5000), [], [])  # over twice the training size: retrained
    report = maintain(lib, final=False)
    assert (report.trained_on, report.count) == (7100, 7100)

    lib.keeper.set_kind("flat")  # the user's choice wins over the size
    assert maintain(lib).kind == "flat"
    assert Library.open(lib.location).index().kind == "flat"


def test_ivf_search_reaches_its_measured_recall_and_scores_exactly(library_at):
    xs = vectors(6000, seed=3)
    lib = new_library(library_at, xs)
    lib.keeper.set_kind("ivf")
    report = maintain(lib)
    assert report.kind == "ivf" and report.recall_at_10 >= 0.95
    reader = Library.open(lib.location)
    assert reader.index().kind == "ivf"
    rng = np.random.default_rng(9)
    queries = xs[rng.integers(0, len(xs), 100)] + rng.standard_normal((100, DIM)).astype(np.float32) * 0.08
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids, vecs = loaded = lib.load_vectors()
    recall = np.mean([len(set(found(reader, q, 10)) & set(exact(lib, q, 10, loaded=loaded))) / 10 for q in queries])
    assert recall >= 0.95
    for image_id, score in reader.index().search(queries[0], 5):
        assert score == pytest.approx(float(vecs[ids == image_id][0] @ queries[0]), abs=1e-5)


@pytest.mark.parametrize("share", [0.002, 0.03, 0.3, 0.9])
def test_filtered_ivf_search_returns_the_true_top_k_of_the_allowed_pictures(tmp_path_factory, share):
    folder = tmp_path_factory.getbasetemp() / "filtered-ivf"
    xs = vectors(6000, seed=4)
    if not (folder / "clipdex.db").exists():
        lib = new_library(folder, xs)
        lib.keeper.set_kind("ivf")
        maintain(lib)
    lib = Library.open(folder)
    rng = np.random.default_rng(int(share * 1000))
    allowed = np.sort(rng.choice(np.arange(1, 6001), max(1, int(6000 * share)), replace=False))
    hits = []
    for q in xs[rng.integers(0, 6000, 30)]:
        truth = exact(lib, q, 10, allowed)
        got = found(lib, q, 10, allowed)
        assert set(got) <= set(allowed.tolist())
        hits.append(len(set(got) & set(truth)) / max(1, len(truth)))
    assert np.mean(hits) >= (1.0 if share < 0.05 else 0.97)


def test_a_build_killed_at_any_moment_leaves_a_library_that_answers_correctly(library_at):
    xs = vectors(20000, seed=5)
    lib = new_library(library_at, xs[:19000])
    maintain(lib)
    writes.store_batch(lib, pictures(xs[19000:], 19000), [], [])
    script = textwrap.dedent(f"""
        from clipdex.library import Library
        lib = Library.open({lib.location!r})
        lib.keeper.set_kind("ivf")
        with lib.write_lock():
            lib.keeper.maintain(print, final=True)
        print("done", flush=True)
    """)
    for delay in (0.3, 0.8, 1.5):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        fresh = Library.open(lib.location)
        assert fresh.index().ids().tolist() == fresh.load_vectors()[0].tolist()
        assert [found(fresh, xs[i], 1) for i in (5, 19500)] == [[6], [19501]]
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert finished.stdout.strip().endswith("done")
    after = Library.open(lib.location)
    assert after.index().kind == "ivf" and after.index().ntotal == 20000
    assert not list(lib.path.glob(".index*.tmp"))
    assert [p.name for p in index_files(lib.path)] == [json.loads(after.get_meta(after.keeper.record_key))["file"]]


@pytest.mark.parametrize("damage", ["truncated", "bytes appended", "a FIFO", "another library's file",
                                    "a record naming a file elsewhere", "codes damaged inside its lists"])
def test_a_damaged_or_swapped_ivf_file_is_rebuilt_not_trusted(tmp_path, damage):
    def ivf_library(folder: Path, seed: int) -> tuple[Library, Path]:
        lib = new_library(folder, vectors(3000, seed=seed))
        lib.keeper.set_kind("ivf")
        maintain(lib)
        return lib, lib.path / json.loads(lib.get_meta("index_file"))["file"]

    lib, path = ivf_library(tmp_path / "lib", 8)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "bytes appended":
        path.write_bytes(path.read_bytes() + bytes(64))
    elif damage == "a FIFO":
        path.unlink()
        os.mkfifo(path)
    elif damage == "another library's file":  # same size and shape, other vectors and ids
        other, other_path = ivf_library(tmp_path / "other", 9)
        with other.session() as s:
            s.execute(text("DELETE FROM images WHERE id > 1500"))
            s.commit()
        path.write_bytes(other_path.read_bytes())
    elif damage == "codes damaged inside its lists":  # headers, sizes and ids intact: only a hash of it all sees it
        layout, index = check_ivf_file(path, DIM), faiss.read_index(str(path))
        sizes = [index.invlists.list_size(i) for i in range(layout.nlist)]
        raw, at, noise = bytearray(path.read_bytes()), layout.lists_offset, np.random.default_rng(1)
        for n in sizes:  # each list: its codes, then its ids
            raw[at:at + n * layout.code_size] = noise.integers(0, 256, n * layout.code_size, np.uint8).tobytes()
            at += n * (layout.code_size + 8)
        assert at == len(raw)
        path.write_bytes(bytes(raw))
    else:
        record = json.loads(lib.get_meta("index_file"))
        record["file"] = "../index.1.ivf"
        with lib.session() as s:
            lib.set_meta(s, "index_file", json.dumps(record))
            s.commit()
    fresh = Library.open(lib.path)
    answers: list = []
    worker = threading.Thread(target=lambda: answers.append(fresh.index()), daemon=True)
    worker.start()
    worker.join(60)
    assert answers, "still loading after 60 s"
    assert answers[0].ids().tolist() == fresh.load_vectors()[0].tolist()
    assert [found(fresh, fresh.vectors_of([i])[1][0], 1) for i in (77, 1234, 2999)] == [[77], [1234], [2999]]


def test_a_flat_file_from_another_library_with_the_same_ids_is_not_used(tmp_path):
    """Two libraries filled alike hold the same ids at the same generation: only the record's
    fingerprint tells their files apart, and a copied one must be rebuilt, not searched."""
    libs = []
    for name, seed in (("lib", 3), ("other", 4)):
        lib = new_library(tmp_path / name, vectors(3000, seed=seed))
        maintain(lib)
        libs.append(lib)
    mine, other = (lib.path / json.loads(lib.get_meta("index_file"))["file"] for lib in libs)
    assert mine.name == other.name
    mine.write_bytes(other.read_bytes())
    fresh = Library.open(libs[0].path)
    assert [found(fresh, fresh.vectors_of([i])[1][0], 1) for i in (77, 1234, 2999)] == [[77], [1234], [2999]]


def test_an_ivf_index_larger_than_the_memory_limit_still_serves(tmp_path):
    """The lists stay on disk (memory-mapped): a process whose private memory is capped below their
    size still loads the index and answers, while reading the same file into memory fails."""
    xs = vectors(60000, seed=6)
    lib = new_library(tmp_path / "lib", xs, batch=10000)
    lib.keeper.set_kind("ivf")
    maintain(lib)
    ivf = next(p for p in index_files(lib.path) if p.suffix == ".ivf")
    assert ivf.stat().st_size > 7_000_000
    probe = textwrap.dedent(f"""
        import resource, sys, faiss, numpy as np
        from clipdex.library import Library
        lib = Library.open({str(lib.path)!r})
        q = lib.vectors_of([123])[1][0]
        def private_mb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmData")).split()[1]) // 1024
        limit = (private_mb() + 6) << 20  # less than the lists hold (8 MB)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        mode = sys.argv[1]
        if mode == "in-memory":
            try:
                faiss.read_index({str(ivf)!r})
                print("loaded")
            except (MemoryError, RuntimeError):
                print("out of memory")
        else:
            print(lib.index().search(q, 3)[0][0])
    """)
    served = subprocess.run([sys.executable, "-c", probe, "mapped"], capture_output=True, text=True, timeout=120)
    assert served.stdout.strip() == "123", served.stderr[-2000:]
    control = subprocess.run([sys.executable, "-c", probe, "in-memory"], capture_output=True, text=True,
                             timeout=120)
    assert "out of memory" in control.stdout or control.returncode != 0


@pytest.mark.skipif(not gpu.available(), reason="FAISS sees no GPU here: its GPU path is unverified on this machine")
def test_on_a_gpu_the_ivf_trains_and_searches_there(tmp_path):
    xs = vectors(6000, seed=7)
    lib = new_library(tmp_path / "lib", xs)
    lib.keeper.set_kind("ivf")
    report = maintain(lib)
    assert report.on_gpu and report.recall_at_10 >= 0.95
    reader = Library.open(lib.path)
    assert reader.index().base.on_device is not None
    assert [found(reader, xs[i], 1) for i in (3, 4000)] == [[4], [4001]]


def test_the_databases_checksum_of_ids_is_numpys_for_any_id(library_at):
    from clipdex.ann.base import ids_checksum

    lib = new_library(library_at, vectors(6, seed=12))
    far = [1, 2, 4294967296 * 3 + 5, 2**40 + 7, 2**62, 2**63 - 1]
    with lib.session() as s:
        for old, new in zip(range(6, 0, -1), sorted(far, reverse=True)):
            s.execute(text("UPDATE images SET id = :new WHERE id = :old"), {"new": new, "old": old})
        s.commit()
    assert lib.ids_snapshot()[1] == ids_checksum(np.array(far, np.int64))


def test_filters_holding_unknown_negative_or_huge_ids_are_answered(library_at):
    xs = vectors(3000, seed=10)
    lib = new_library(library_at, xs)
    lib.keeper.set_kind("ivf")
    maintain(lib)
    weird = np.array([-5, 0, 12, 40, 2**62, 2**63 - 1, 99_999_999], np.int64)
    assert found(lib, xs[11], 3, weird) == [12, 40]
    with lib.session() as s:  # a library whose ids are far apart (a hostile or hand-edited one)
        s.execute(text("UPDATE images SET id = 4611686018427387904 WHERE id = 7"))
        s.commit()
    lib.keeper.set_kind("flat")
    maintain(lib)
    far = Library.open(lib.location)
    assert found(far, xs[6], 1, np.array([4611686018427387904, 8])) == [4611686018427387904]


# -- things under an index file's name that are not our files; what killed rewrites leave ---------------------


def recorded(lib: Library) -> Path:
    return lib.path / json.loads(lib.get_meta("index_file"))["file"]


@pytest.mark.parametrize("planted", ["a directory", "a FIFO", "a symlink to a file elsewhere"])
def test_something_else_under_the_name_being_saved_is_moved_aside_and_the_save_succeeds(tmp_path, planted):
    xs = vectors(3000, seed=21)
    lib = new_library(tmp_path / "lib", xs[:2000])
    maintain(lib)
    writes.store_batch(lib, pictures(xs[2000:], 2000), [], [])
    target = lib.path / f"index.{lib.generation}.faiss"  # the name the next save writes
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not clipdex's")
    (lib.path / "index.0.faiss").mkdir()  # another generation's name: left alone, never a failed clean-up
    if planted == "a directory":
        target.mkdir()
        (target / "kept.txt").write_text("mine")
    elif planted == "a FIFO":
        os.mkfifo(target)
    else:
        target.symlink_to(outside)
    maintain(lib)  # an IsADirectoryError here before
    assert recorded(lib) == target and target.is_file() and not target.is_symlink()
    if planted == "a directory":
        assert (lib.path / f"{target.name}.moved-aside" / "kept.txt").read_text() == "mine"
    assert outside.read_text() == "not clipdex's" and (lib.path / "index.0.faiss").is_dir()
    fresh = Library.open(lib.path)
    assert fresh.index().ids().tolist() == fresh.load_vectors()[0].tolist()
    assert [found(fresh, xs[i], 1) for i in (5, 2500)] == [[6], [2501]]


def test_a_directory_at_the_recorded_name_is_moved_aside_by_a_reader_which_then_saves(tmp_path):
    """Before, every reader process rebuilt the index in memory on every start: its save failed."""
    lib = new_library(tmp_path / "lib", vectors(2000, seed=22))
    maintain(lib)
    path = recorded(lib)
    path.unlink()
    path.mkdir()
    fresh = Library.open(lib.path)
    assert fresh.index().ids().tolist() == fresh.load_vectors()[0].tolist()
    assert recorded(fresh) == path and path.is_file() and (lib.path / f"{path.name}.moved-aside").is_dir()
    assert Library.open(lib.path).keeper._verified(json.loads(lib.get_meta("index_file")), DIM) is not None


def test_index_ends_cleanly_with_directories_named_like_index_files(tmp_path):
    """`clipdex index` with a directory at another index file's name and one at the recorded name (rebuilt at the
    same generation): both runs end with exit 0 and no traceback (IsADirectoryError after the commit before)."""
    from clipdex.synthetic import write_collection
    from tests.conftest import invoke

    write_collection(tmp_path / "pics", per_class=1, seed=23)
    lib_path = tmp_path / "lib"
    first = invoke("index", str(tmp_path / "pics"), "--library", str(lib_path), "--model", "tiny", "--workers", "1")
    assert first.exit_code == 0, first.stderr
    lib = Library.open(lib_path)
    path = recorded(lib)
    (lib_path / "index.0.faiss").mkdir()  # another generation's name: left alone
    path.unlink()
    path.mkdir()
    (path / "kept.txt").write_text("mine")
    again = invoke("index", str(tmp_path / "pics"), "--library", str(lib_path), "--workers", "1")
    assert again.exit_code == 0, again.stderr
    assert recorded(Library.open(lib_path)) == path and path.is_file()
    assert (lib_path / f"{path.name}.moved-aside" / "kept.txt").read_text() == "mine"
    assert (lib_path / "index.0.faiss").is_dir()
    searched = invoke("search", "a red circle", "--library", str(lib_path), "-k", "1")
    assert searched.exit_code == 0 and "circle" in searched.stdout


def test_what_a_killed_rewrite_left_goes_when_a_run_ends_even_with_nothing_to_rebuild(tmp_path):
    lib = new_library(tmp_path / "lib", vectors(2000, seed=24))
    lib.keeper.set_kind("ivf")
    maintain(lib)
    keep = recorded(lib)
    leftovers = [lib.path / f".index.{lib.generation + 1}.faiss.k2j4_x9.tmp",  # killed while writing
                 lib.path / f"index.{lib.generation + 1}.faiss",  # killed between the rename and the record
                 lib.path / "index.0.ivf"]
    for path in leftovers:
        path.write_bytes(b"\0" * 4096)
    (lib.path / "index.1.faiss").symlink_to(tmp_path / "nowhere")
    leftovers.append(lib.path / "index.1.faiss")
    others = [lib.path / name for name in ("index.7.faiss.bak", "notes.index.3.ivf", ".index.3.ivf.tmp.keep",
                                           "my.index.5.faiss.x.tmp")]
    for path in others:
        path.write_text("not clipdex's")
    (lib.path / ".index.9.ivf.abc.tmp").mkdir()  # a directory under our temporary name: left alone
    maintain(lib, final=False)  # nothing due, not the end of a run: nothing touched
    assert all(os.path.lexists(p) for p in leftovers)
    assert maintain(lib) is None  # the end of a run, nothing to rebuild
    assert not [p for p in leftovers if os.path.lexists(p)]
    assert all(p.read_text() == "not clipdex's" for p in others) and (lib.path / ".index.9.ivf.abc.tmp").is_dir()
    assert recorded(lib) == keep and keep.is_file()
    assert Library.open(lib.path).keeper._verified(json.loads(lib.get_meta("index_file")), DIM) is not None
