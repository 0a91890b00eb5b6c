"""``index --rebuild`` never leaves a library that cannot answer: old vectors until the new set is complete."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from clipdex.cli import main
from clipdex.decoding import decode_file
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import Encoder, tiny_model_dir
from clipdex.search import build_query
from tests.conftest import BOTH, copy_library
from tests.terminal import Terminal

BACKENDS = BOTH  # every test on a library runs on SQLite and on PostgreSQL


@pytest.fixture()
def copied(tmp_path, library, request) -> str:
    """A private copy of the session library (120 pictures, tiny model): its folder, or its cloned database's URL."""
    return copy_library(library, tmp_path / "lib", request)


@pytest.fixture()
def other_model(tmp_path) -> str:
    """The tiny model again, from another folder: another model identity, same vectors."""
    shutil.copytree(tiny_model_dir(), tmp_path / "other-model")
    return f"local-dir:{tmp_path / 'other-model'}"


def top_hits(lib: Library, encoder: Encoder, text: str = "a red circle", k: int = 5) -> list[int]:
    return [i for i, _ in lib.index().search(build_query(encoder, text), k)]


def staged(location: str) -> int:
    """Vectors staged by an unfinished rebuild, read straight from the library's database."""
    lib = Library.open(location)
    try:
        with lib.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM staged_vectors")).scalar_one()
    finally:
        lib.close()


def test_a_rebuild_with_a_model_that_cannot_load_changes_nothing(copied, library, encoder, collection):
    root = next(iter(collection)).parent.parent
    before = Library.open(copied).generation
    out = CliRunner().invoke(main, ["index", str(root), "--library", str(copied), "--rebuild",
                                    "--model", "ViT-B-32:nosuchtag"])
    assert out.exit_code == 2
    assert out.stderr.startswith("Error: unknown pretrained tag 'nosuchtag' for ViT-B-32 (known: ")
    lib = Library.open(copied)
    assert (lib.info()["images"], str(lib.model_spec), lib.generation) == (120, "tiny", before)
    assert top_hits(lib, encoder) == top_hits(library, encoder)
    assert staged(copied) == 0


@pytest.mark.slow  # a real process run end to end
def test_kill_9_mid_rebuild_keeps_the_old_library_then_the_rerun_switches(copied, library, encoder, collection,
                                                                          other_model):
    root = next(iter(collection)).parent.parent
    ids_before, vectors_before = Library.open(copied).load_vectors()
    run = Terminal("index", str(root), "--library", str(copied), "--rebuild", "--model", other_model,
                   "--workers", "1", "--batch-size", "4")
    run.wait_for(r"re-encoding: +\d+%\|[^|]*\| +(2\d|[3-9]\d)/120")  # at least 20 staged and committed
    os.killpg(run.group, signal.SIGKILL)
    run.finish()
    done = staged(copied)
    assert 20 <= done < 120

    lib = Library.open(copied)  # still the old library: its model, all its pictures, the same answers
    assert str(lib.model_spec) == "tiny"
    ids, vectors = lib.load_vectors()
    assert ids.tolist() == ids_before.tolist() and np.array_equal(vectors, vectors_before)
    assert lib.index().ntotal == 120 and top_hits(lib, encoder) == top_hits(library, encoder)
    said: list[str] = []  # an ordinary run meanwhile mentions the unfinished rebuild, and leaves it be
    Indexer(lib, None, workers=2, progress=False, say=said.append).run([str(root)])
    assert said[0] == (f"(an unfinished rebuild with model {other_model} holds {done} re-encoded pictures: "
                       "rebuilding with that model again continues from there)")

    stats = Indexer(lib, other_model, workers=2, progress=False).run([str(root)], rebuild=True)
    assert (stats.indexed, stats.encoded, stats.reused, stats.unchanged) == (120, 120 - done, done, 0)
    assert stats.rebuilt
    switched = Library.open(copied)
    assert switched.model_spec.identity == other_model
    assert switched.load_vectors()[0].tolist() == ids_before.tolist()  # every picture keeps its id
    assert sorted(switched.index().ids().tolist()) == ids_before.tolist()
    assert top_hits(switched, switched.encoder_for(None)) == top_hits(library, encoder)
    assert staged(copied) == 0


def test_a_rebuild_covers_the_whole_library_and_reports_what_is_gone(tmp_path, library_at, encoder, other_model):
    from clipdex.synthetic import write_collection

    here, there = tmp_path / "here", tmp_path / "there"
    write_collection(here, per_class=1, seed=3)
    write_collection(there, per_class=1, seed=4)
    lib = Library.create(library_at)
    Indexer(lib, encoder, workers=2, progress=False).run([str(here), str(there)])
    (here / "red" / "circle-000.jpg").unlink()                 # deleted under the folder given
    (there / "blue" / "square-000.jpg").unlink()               # gone from a folder not given this time
    bad = here / "green" / "star-000.jpg"
    bad.write_bytes(bad.read_bytes()[:200])                    # now unreadable

    stats = Indexer(lib, other_model, workers=2, progress=False).run([str(here)], rebuild=True)
    assert (stats.indexed, stats.encoded, stats.removed, stats.skipped) == (45, 45, 1, 2)
    gone = str(there / "blue" / "square-000.jpg")
    why = decode_file(str(bad), 64, "shortest", 10**8).error  # whatever the decoder says of it, recorded as such
    assert why
    expected = {gone: "file not found when the library was rebuilt", str(bad): why}
    assert stats.skipped_files == expected
    assert dict(Library.open(lib.location).skipped()) == expected
    fresh = Library.open(lib.location)
    assert fresh.info()["images"] == 45 and fresh.model_spec.identity == other_model
    assert sum(1 for p in fresh.load_vectors()[0]) == fresh.index().ntotal == 45
    from clipdex.library.held import listing  # tiny's vectors are kept, less those of the pictures removed

    assert [(e.model, e.pictures, e.total, e.active) for e in listing(fresh)] == [
        (other_model, 45, 45, True), ("tiny", 45, 45, False)]


def test_staging_made_for_another_model_is_discarded(copied, collection, other_model, encoder):
    from clipdex.library import staging

    lib = Library.open(copied)
    spec = Encoder(other_model).spec
    ids, vectors = lib.load_vectors()
    with lib.write_lock():  # as a rebuild stages (on PostgreSQL begin() makes the writer's hold exclusive)
        staging.begin(lib, spec, 64)
        staging.stage(lib, [], [staging.Unusable(int(ids[0]), "made up")])
    assert staging.pending(lib) == (str(spec), 1)
    root = next(iter(collection)).parent.parent
    stats = Indexer(lib, encoder, workers=2, progress=False).run([str(root)], rebuild=True)
    assert (stats.indexed, stats.encoded, stats.skipped) == (120, 120, 0)  # the stale entry was not used
    assert staging.pending(lib) is None


def test_an_upgraded_database_stages_like_a_new_one(tmp_path):
    # SQLite only (not parametrised by backend): upgrades a version 1 clipdex.db file kept in tests/data
    from sqlalchemy import inspect

    old_dir = tmp_path / "old"
    old_dir.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "library-v1" / "clipdex.db", old_dir / "clipdex.db")
    old, new = Library.open(old_dir), Library.create(tmp_path / "new")

    def shape(lib: Library) -> tuple:
        i = inspect(lib.engine)
        return ([(c["name"], str(c["type"]), c["nullable"]) for c in i.get_columns("staged_vectors")],
                i.get_pk_constraint("staged_vectors")["constrained_columns"],
                [(f["referred_table"], f["constrained_columns"], f["options"].get("ondelete"))
                 for f in i.get_foreign_keys("staged_vectors")])

    assert shape(old) == shape(new)
