"""Incremental indexing: only what changed is encoded; ids are stable; FAISS agrees with SQLite."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from clipdex.errors import ModelMismatch, UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library.schema import ImageRow
from clipdex.models import TINY_MODEL
from clipdex.synthetic import Sample, draw, write_collection
from tests.conftest import BOTH

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL


def index(lib, *paths, **kw):
    return Indexer(lib, TINY_MODEL, workers=2, **kw).run([str(p) for p in paths])


def rows(lib) -> dict[str, int]:
    with lib.session() as s:
        return dict(s.execute(select(ImageRow.path, ImageRow.id)).all())


def assert_consistent(lib):
    """The FAISS index holds exactly the database's ids, with the database's vectors."""
    ids, vectors = lib.load_vectors()
    index = lib.index()
    assert sorted(index.ids().tolist()) == ids.tolist()
    for i, v in zip(ids[:5], vectors[:5]):
        assert np.allclose(index.vector(int(i)), v)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.fixture()
def pics(tmp_path):
    written = write_collection(tmp_path / "pics", per_class=1, seed=3)
    assert len(written) == 24
    return tmp_path / "pics"


def test_first_run_then_unchanged(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    first = index(lib, pics)
    assert (first.indexed, first.encoded, first.unchanged, first.skipped) == (24, 24, 0, 0)
    again = index(lib, pics)
    assert (again.indexed, again.encoded, again.unchanged, again.moved, again.removed) == (0, 0, 24, 0, 0)
    assert_consistent(lib)


def test_add_change_delete_move(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    before = rows(lib)

    draw(Sample("red", "star")).save(pics / "new.jpg")                    # added
    changed = pics / "red" / "circle-000.jpg"
    draw(Sample("blue", "square")).save(changed)                         # changed content
    os.utime(changed, (1_000_000, 1_000_000))
    (pics / "green" / "star-000.jpg").unlink()                           # deleted
    moved_from = pics / "blue" / "triangle-000.jpg"
    (pics / "archive").mkdir()
    moved_to = pics / "archive" / "renamed.jpg"
    shutil.move(moved_from, moved_to)                                    # moved

    stats = index(lib, pics)
    assert (stats.indexed, stats.encoded, stats.moved, stats.removed, stats.unchanged) == (2, 2, 1, 1, 21)
    after = rows(lib)
    assert after[str(moved_to)] == before[str(moved_from)]  # the moved picture keeps its id and vector
    assert after[str(changed)] == before[str(changed)]      # a changed file keeps its id
    assert str(pics / "green" / "star-000.jpg") not in after
    assert str(pics / "new.jpg") in after and after[str(pics / "new.jpg")] > max(before.values())
    assert len(after) == 24
    assert_consistent(lib)


def test_copy_of_an_indexed_file_reuses_its_vector(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    shutil.copy(pics / "red" / "circle-000.jpg", pics / "copy.jpg")
    stats = index(lib, pics)
    assert (stats.indexed, stats.encoded, stats.reused) == (1, 0, 1)
    assert_consistent(lib)


def test_copy_and_new_picture_in_one_batch(library_at, tmp_path):
    """A batch holding both a copy (reused vector) and new content (encoded) stores both, run after run."""
    folder = tmp_path / "D2"
    folder.mkdir()
    draw(Sample("red", "circle")).save(folder / "a.jpg")
    lib = Library.create(library_at)
    assert index(lib, folder).indexed == 1
    shutil.copy(folder / "a.jpg", folder / "copy.jpg")
    draw(Sample("blue", "star")).save(folder / "new.png")
    stats = index(lib, folder)
    assert (stats.indexed, stats.encoded, stats.reused, stats.skipped) == (2, 1, 1, 0)
    ids, vectors = lib.load_vectors()
    vector = dict(zip(ids.tolist(), vectors))
    ids_of = rows(lib)
    assert np.allclose(vector[ids_of[str(folder / "copy.jpg")]], vector[ids_of[str(folder / "a.jpg")]])
    assert not np.allclose(vector[ids_of[str(folder / "new.png")]], vector[ids_of[str(folder / "a.jpg")]])
    assert index(lib, folder).unchanged == 3
    assert_consistent(lib)


def test_old_content_of_a_picture_changed_in_the_same_run_is_encoded(library_at, tmp_path):
    """Once a row holds new content, a file with its old content is encoded, not given the row's new vector."""
    folder = tmp_path / "D3"
    folder.mkdir()
    draw(Sample("red", "circle")).save(folder / "a.png")
    lib = Library.create(library_at)
    index(lib, folder)
    shutil.copy(folder / "a.png", folder / "c.png")  # the old content of a.png, decoded after it
    draw(Sample("green", "square")).save(folder / "a.png")
    os.utime(folder / "a.png", (1, 1))
    stats = Indexer(lib, TINY_MODEL, workers=1, batch_size=1).run([str(folder)])
    assert (stats.indexed, stats.encoded, stats.reused) == (2, 2, 0)
    ids, vectors = lib.load_vectors()
    vector = dict(zip(ids.tolist(), vectors))
    ids_of = rows(lib)
    assert not np.allclose(vector[ids_of[str(folder / "c.png")]], vector[ids_of[str(folder / "a.png")]])
    assert_consistent(lib)


def test_rebuild_reencodes_everything(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    stats = Indexer(lib, TINY_MODEL, workers=2).run([str(pics)], rebuild=True)
    assert (stats.indexed, stats.encoded, stats.reused, stats.unchanged) == (24, 24, 0, 0)
    assert_consistent(lib)


def test_only_the_given_folder_is_swept(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    other = tmp_path / "other"
    write_collection(other, per_class=1, seed=9)
    index(lib, pics, other)
    shutil.rmtree(pics / "red")
    stats = index(lib, pics)
    assert stats.removed == 4
    assert sum(1 for p in rows(lib) if p.startswith(str(other))) == 24


def test_missing_root_is_an_error_not_a_mass_deletion(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    with pytest.raises(UsageError, match="path not found: .*unmounted"):
        index(lib, tmp_path / "unmounted")
    assert len(rows(lib)) == 24


def test_stale_index_file_is_rebuilt_from_sqlite(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    for f in lib.path.glob("index.*.faiss"):
        f.unlink()
    fresh = Library.open(lib.location)
    assert fresh.index().ntotal == 24
    assert_consistent(fresh)
    # saved for the next process, since no writer held the library
    assert [p.name for p in lib.path.glob("index.*.faiss")] == [f"index.{fresh.generation}.faiss"]


def test_other_model_is_refused_unless_rebuilding(library_at, tmp_path, pics):
    lib = Library.create(library_at)
    index(lib, pics)
    other = f"local-dir:{tmp_path / 'other-model'}"
    shutil.copytree(Library.open(lib.location).encoder_for(None).spec.open_clip_name.split(":", 1)[1],
                    tmp_path / "other-model")
    with pytest.raises(ModelMismatch, match=r"was built with model tiny, not local-dir:.*other-model"):
        lib.encoder_for(other)
    with pytest.raises(ModelMismatch, match="their vectors cannot be compared$") as refused:
        Indexer(lib, other).run([str(pics)])
    assert refused.value.requested == f"local-dir:{(tmp_path / 'other-model').resolve()}"  # the CLI hints with it
    stats = Indexer(lib, other, workers=2).run([str(pics)], rebuild=True)
    assert stats.encoded == 24
    assert str(Library.open(lib.location).model_spec).startswith("local-dir:")
