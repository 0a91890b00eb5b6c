"""Tagging passes add up (issue #7): another label set adds its tags, the same one replaces only its own.

Everything runs the real ``clipdex`` commands in-process, on a private copy of the shared
library (SQLite and PostgreSQL), and checks the exact lines people read.
"""

from __future__ import annotations

import json

from clipdex.synthetic import COLORS, SHAPES
from tests.conftest import BOTH, cli, export

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL

COLOUR_LABELS = ",".join(COLORS)  # red,green,blue,yellow,purple,orange
COLOUR_PASS = "red, green, blue, yellow, purple, orange"
SHAPE_PASS = "circle, square, triangle, star"


def by_pass(rows: list[dict], name: str) -> list[tuple]:
    return sorted((r["id"], r["label"], r["probability"]) for r in rows if r["pass"] == name)


def test_a_second_label_set_adds_its_tags_and_keeps_the_first(lib_dir, tmp_path):
    first = cli("tag", "--labels", COLOUR_LABELS, "--library", lib_dir).stdout.splitlines()
    assert first[0] == f'tagged 120 pictures (pass "{COLOUR_PASS}"): 120 tags; 120 added, 0 changed, 0 removed, ' \
                       "0 unchanged"
    colours = by_pass(export(lib_dir), COLOUR_PASS)
    labels_file = tmp_path / "shapes.txt"
    labels_file.write_text("\n".join(SHAPES) + "\n")
    second = cli("tag", "--labels-file", str(labels_file), "--library", lib_dir).stdout.splitlines()
    assert second[0] == f'tagged 120 pictures (pass "{SHAPE_PASS}"): 120 tags; 120 added, 0 changed, 0 removed, ' \
                        "0 unchanged"
    rows = export(lib_dir)
    assert by_pass(rows, COLOUR_PASS) == colours  # the colour tags are all still there, untouched
    assert len(by_pass(rows, SHAPE_PASS)) == 120 and len(rows) == 240
    assert {r["source"] for r in rows} == {"zero-shot"}


def test_the_same_label_set_again_replaces_only_its_own_tags(lib_dir):
    cli("tag", "--labels", COLOUR_LABELS, "--library", lib_dir)
    cli("tag", "--labels", ",".join(SHAPES), "--library", lib_dir)
    shapes = by_pass(export(lib_dir), SHAPE_PASS)
    again = cli("tag", "--labels", ",".join(reversed(list(COLORS))), "--library", lib_dir).stdout.splitlines()
    assert again[0] == f'tagged 120 pictures (pass "{COLOUR_PASS}"): 120 tags; 0 added, 0 changed, 0 removed, ' \
                       "120 unchanged"
    moved = json.loads(cli("tag", "--labels", COLOUR_LABELS, "--template", "{} and also blue", "--library", lib_dir,
                           "--json").stdout)
    assert (moved["added"], moved["removed"], moved["changed"] + moved["unchanged"]) == (0, 0, 120)
    assert moved["changed"] > 0 and moved["pass"]["name"] == COLOUR_PASS
    rows = export(lib_dir)
    assert by_pass(rows, SHAPE_PASS) == shapes and len(rows) == 240


def test_a_folder_pass_then_the_whole_library(lib_dir, collection):
    red = str(next(iter(collection)).parent.parent / "red")
    part = cli("tag", "--labels", COLOUR_LABELS, "--folder", red, "--library", lib_dir, "--json")
    assert json.loads(part.stdout)["added"] == 20
    whole = cli("tag", "--labels", COLOUR_LABELS, "--library", lib_dir).stdout.splitlines()[0]
    assert whole == f'tagged 120 pictures (pass "{COLOUR_PASS}"): 120 tags; 100 added, 0 changed, 0 removed, ' \
                    "20 unchanged"


def test_dry_run_says_what_would_change_and_writes_nothing(lib_dir):
    labels = "red,orange,circle,square"
    cli("tag", "--labels", labels, "--library", lib_dir)
    before = export(lib_dir)
    args = ("tag", "--labels", labels, "--multi-label", "--threshold", "0.2", "--library", lib_dir)
    text = cli(*args, "--dry-run").stdout.splitlines()
    predicted = json.loads(cli(*args, "--dry-run", "--json").stdout)
    assert export(lib_dir) == before  # nothing written
    done = json.loads(cli(*args, "--json").stdout)
    assert predicted["dry_run"] and not done["dry_run"]
    counts = ("images", "tags_written", "added", "changed", "removed", "unchanged", "counts")
    assert {k: predicted[k] for k in counts} == {k: done[k] for k in counts}
    # the same labels and templates: every top label stays as it was; the second ones above 0.2 are added
    assert (done["changed"], done["removed"], done["unchanged"]) == (0, 0, 120)
    assert done["added"] == done["tags_written"] - 120 > 0
    assert len(export(lib_dir)) == done["tags_written"]
    assert text[0] == ('dry run, nothing written: tagging 120 pictures (pass "red, orange, circle, square") would '
                       f'give {done["tags_written"]} tags; {done["added"]} added, 0 changed, 0 removed, 120 unchanged')
    examples = predicted["examples"]
    assert len(examples) == 3 and {e["change"] for e in examples} == {"added"}
    assert text[1:] == [f"  added    {e['after']['label']} {e['after']['probability']:.3f}  {e['path']}"
                        for e in examples]


def test_a_lower_threshold_then_a_higher_one_removes_tags(lib_dir):
    labels = "red,orange,circle,square"
    cli("tag", "--labels", labels, "--multi-label", "--threshold", "0.2", "--library", lib_dir)
    many = len(export(lib_dir))
    fewer = json.loads(cli("tag", "--labels", labels, "--multi-label", "--threshold", "0.45", "--library", lib_dir,
                           "--json").stdout)
    assert fewer["removed"] > 0 and fewer["added"] == 0
    assert len(export(lib_dir)) == many - fewer["removed"] == fewer["tags_written"]
    line = cli("tag", "--labels", labels, "--multi-label", "--threshold", "0.2", "--library", lib_dir, "--dry-run"
               ).stdout.splitlines()
    assert line[1].startswith("  added    ") and f"{fewer['removed']} added" in line[0]


def test_label_moves_are_changes_with_examples(lib_dir):
    cli("tag", "--labels", "warm=something red,cold=something blue", "--library", lib_dir)
    flipped = cli("tag", "--labels", "warm=something blue,cold=something red", "--library", lib_dir, "--dry-run",
                  "--json")
    out = json.loads(flipped.stdout)
    assert out["added"] == out["removed"] == 0 and out["changed"] > 0
    moves = [e for e in out["examples"] if e["before"]["label"] != e["after"]["label"]]
    assert moves and moves == out["examples"][:len(moves)]  # label moves are shown before probability moves
    text = cli("tag", "--labels", "warm=something blue,cold=something red", "--library", lib_dir, "--dry-run")
    e = out["examples"][0]
    assert text.stdout.splitlines()[1] == (f"  changed  {e['before']['label']} {e['before']['probability']:.3f} -> "
                                           f"{e['after']['label']} {e['after']['probability']:.3f}  {e['path']}")


def test_a_probability_moving_less_than_a_thousandth_is_no_change():
    from clipdex.library.tags import compare

    assert compare({"circle": 0.999968}, [("circle", 0.999956)]) == ([], 1)
    changes, unchanged = compare({"circle": 0.90}, [("circle", 0.95)])
    assert unchanged == 0 and [c["change"] for c in changes] == ["changed"]
