"""Tags a photographer can trust (issue #10): named passes, a person's tags and removals, dropping a pass,
and the page's add/remove routes guarded against cross-site requests.

Everything runs the real ``clipdex`` commands in-process (or the real Flask app) on a private
copy of the shared tiny-model library, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipdex.library import Library
from clipdex.synthetic import COLORS, SHAPES
from clipdex.web import create_app
from tests.conftest import BOTH, cli, export

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL

SHAPE_LABELS = ",".join(SHAPES)
COLOUR_LABELS = ",".join(COLORS)


def tags_of(rows: list[dict], path: str) -> set[tuple[str, str]]:
    return {(r["label"], r["pass"]) for r in rows if r["path"] == path}


def test_a_named_pass_is_replaced_whatever_labels_it_runs(lib_dir):
    out = cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir).stdout.splitlines()[0]
    assert out == 'tagged 120 pictures (pass "kind"): 120 tags; 120 added, 0 changed, 0 removed, 0 unchanged'
    cli("tag", "--labels", COLOUR_LABELS, "--library", lib_dir)  # an unnamed pass beside it
    colours = sorted((r["id"], r["label"]) for r in export(lib_dir) if r["pass"] != "kind")
    again = json.loads(cli("tag", "--set", "kind", "--labels", COLOUR_LABELS, "--template", "a {} thing",
                           "--library", lib_dir, "--json").stdout)
    assert again["pass"]["name"] == "kind" and again["changed"] == 120 and again["added"] == again["removed"] == 0
    rows = export(lib_dir)
    assert {r["label"] for r in rows if r["pass"] == "kind"} <= set(COLORS)
    assert sum(r["pass"] == "kind" for r in rows) == 120
    assert sorted((r["id"], r["label"]) for r in rows if r["pass"] != "kind") == colours  # untouched
    sets = {s["name"]: s for s in json.loads(cli("tags", "sets", "--library", lib_dir, "--json").stdout)}
    kind = sets["kind"]
    assert kind["labels"] == list(COLORS) and kind["templates"] == ["a {} thing"] and kind["tags"] == 120
    assert kind["model"] == Library.open(lib_dir).get_meta("model_identity")
    assert "kind  [zero-shot, 120 tags]  labels: red, green, blue, yellow, purple, orange  templates: a {} thing  " \
           "model: " in cli("tags", "sets", "--library", lib_dir).stdout


def test_a_probe_runs_as_a_named_pass_too(lib_dir, collection):
    root = next(iter(collection)).parent.parent  # one folder per colour: the probe's classes
    cli("probe", "train", str(root), "--name", "colours", "--library", lib_dir)
    first = json.loads(cli("tag", "--probe", "colours", "--set", "mine", "--library", lib_dir, "--json").stdout)
    assert first["pass"]["name"] == "mine" and first["added"] == 120
    sets = {s["name"]: s for s in json.loads(cli("tags", "sets", "--library", lib_dir, "--json").stdout)}
    assert sets["mine"]["kind"] == "probe:colours" and sorted(sets["mine"]["labels"]) == sorted(COLORS)
    cli("tag", "--set", "mine", "--labels", SHAPE_LABELS, "--library", lib_dir)  # words now, same pass
    rows = export(lib_dir)
    assert {r["pass"] for r in rows} == {"mine"} and {r["label"] for r in rows} <= set(SHAPES) and len(rows) == 120


def test_person_tags_survive_passes_and_removals_stick(lib_dir, collection):
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    rows = export(lib_dir)
    picture = rows[0]["path"]
    given = rows[0]["label"]  # what the pass gave this picture
    other = str(Path(rows[1]["path"]))

    added = cli("tags", "add", picture, other, "keeper", "--library", lib_dir).stdout.strip()
    assert added == 'tagged 2 pictures "keeper" (0 had it already)'
    removed = cli("tags", "remove", picture, given, "--library", lib_dir).stdout.strip()
    assert removed == f'took "{given}" off 1 picture (1 from kind); tagging passes will not give it back'
    assert tags_of(export(lib_dir), picture) == {("keeper", "person")}

    rerun = json.loads(cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir, "--json").stdout)
    assert rerun["held_back"] == 1 and rerun["added"] == 0 and rerun["tags_written"] == 119
    dry = cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--dry-run", "--library", lib_dir).stdout
    assert "0 added, 0 changed, 0 removed, 119 unchanged; 1 held back (labels a person took off)" in dry
    after = export(lib_dir)
    assert tags_of(after, picture) == {("keeper", "person")}  # the removal stuck, the person's tag stayed
    assert ("keeper", "person") in tags_of(after, other)
    person = [r for r in after if r["source"] == "person"]
    assert len(person) == 2 and all(r["probability"] == 1.0 for r in person)

    # adding the label back lifts the refusal; the pass may give it again
    back = json.loads(cli("tags", "add", picture, given, "--library", lib_dir, "--json").stdout)
    assert back == {"action": "add", "label": given, "pictures": 1, "changed": 1, "tags_removed": {}, "rejections": 1}
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    assert tags_of(export(lib_dir), picture) == {("keeper", "person"), (given, "person"), (given, "kind")}


def test_a_folder_names_every_picture_under_it(lib_dir, collection):
    red = next(iter(collection)).parent.parent / "red"
    edit = json.loads(cli("tags", "add", str(red), "warm", "--library", lib_dir, "--json").stdout)
    assert edit["pictures"] == edit["changed"] == 20
    again = cli("tags", "add", str(red), "warm", "--library", lib_dir).stdout.strip()
    assert again == 'tagged 0 pictures "warm" (20 had it already)'
    assert {r["path"] for r in export(lib_dir) if r["label"] == "warm"} == \
        {str(p) for p in collection if p.parent.name == "red"}


def test_drop_set_removes_a_pass_whole_and_nothing_else(lib_dir):
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    cli("tag", "--set", "colour", "--labels", COLOUR_LABELS, "--library", lib_dir)
    picture = export(lib_dir)[0]["path"]
    cli("tags", "add", picture, "keeper", "--library", lib_dir)
    out = cli("tags", "drop-set", "kind", "--library", lib_dir).stdout.strip()
    assert out == 'dropped pass "kind": 120 tags removed'
    rows = export(lib_dir)
    assert {r["pass"] for r in rows} == {"colour", "person"} and len(rows) == 121
    assert "kind" not in {s["name"] for s in json.loads(cli("tags", "sets", "--library", lib_dir, "--json").stdout)}


def test_clear_one_line_errors(lib_dir, tmp_path):
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    cli("tags", "add", export(lib_dir)[0]["path"], "keeper", "--library", lib_dir)  # "person" is no pass to drop
    unknown = cli("tags", "drop-set", "nope", "--library", lib_dir, code=2)
    assert unknown.stderr.strip() == "Error: no tagging pass is named 'nope' (there are: 'kind')"
    person = cli("tags", "drop-set", "person", "--library", lib_dir, code=2)
    assert person.stderr.startswith("Error: ") and "tags remove" in person.stderr
    missing = cli("tags", "add", str(tmp_path / "nowhere.jpg"), "x", "--library", lib_dir, code=2)
    assert missing.stderr.strip() == f"Error: {tmp_path / 'nowhere.jpg'} is not in the library (no indexed picture " \
                                     "there, nor under it)"
    reserved = cli("tag", "--set", "person", "--labels", SHAPE_LABELS, "--library", lib_dir, code=2)
    assert "choose another name" in reserved.stderr and len(reserved.stderr.strip().splitlines()) == 1
    picture = export(lib_dir)[0]["path"]
    empty = cli("tags", "add", picture, "  ", "--library", lib_dir, code=2)
    assert empty.stderr.strip() == "Error: the label is empty"
    assert len(export(lib_dir)) == 121  # nothing was written by any of them but the one tag added


def test_a_forgotten_label_is_refused_when_the_last_argument_is_a_picture_file_or_folder(lib_dir, collection, tmp_path,
                                                                                          monkeypatch):
    first, second = sorted(str(p) for p in collection)[:2]
    folder = str(Path(first).parent)
    note = tmp_path / "note.txt"
    note.write_text("x")
    for label, what in ((second, "a picture"), (folder, "a folder"), (str(note), "a file")):
        r = cli("tags", "add", first, label, "--library", lib_dir, code=2)
        line = r.stderr.strip()
        assert line.startswith("Error: the last argument is the label, and ") and "did you forget the label?" in line
        assert len(line.splitlines()) == 1 and f"is {what}:" in line
    monkeypatch.chdir(Path(first).parent.parent)  # a relative name counts too
    r = cli("tags", "remove", first, Path(first).parent.name, "--library", lib_dir, code=2)
    assert "is a folder" in r.stderr
    assert export(lib_dir) == []  # nothing was written


def test_taking_off_a_label_nothing_has_is_refused_with_the_labels_there(lib_dir, collection):
    from clipdex.library.persontags import rejections

    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    rows = export(lib_dir)
    picture, given = rows[0]["path"], rows[0]["label"]
    r = cli("tags", "remove", picture, "rond", "--library", lib_dir, code=2)
    assert r.stderr.strip() == f"Error: the picture has no tag 'rond', so nothing was taken off (its tags: {given})"
    folder = str(Path(picture).parent)
    r = cli("tags", "remove", folder, "rond", "--library", lib_dir, "--json", code=2)
    assert r.stderr.startswith("Error: no picture there has the tag 'rond', so nothing was taken off (their tags: ")
    assert given in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert rejections(Library.open(lib_dir)) == []  # no hold-back stored for a typo

    # text and --json tell the same: pictures named, pictures that lost the tag
    on_five = json.loads(cli("tags", "remove", folder, given, "--library", lib_dir, "--json").stdout)
    had = sum(1 for row in rows if row["label"] == given and str(Path(row["path"]).parent) == folder)
    assert (on_five["pictures"], on_five["changed"]) == (20, had) and 0 < had < 20
    again = cli("tags", "remove", folder, given, "--library", lib_dir).stdout.strip()
    assert again == f'"{given}" was taken off those pictures before; tagging passes will not give it back'
    cli("tags", "add", folder, given, "--library", lib_dir)
    text = cli("tags", "remove", folder, given, "--library", lib_dir).stdout.strip()
    assert text == f'took "{given}" off 20 pictures (20 from person); tagging passes will not give it back'
    cli("tags", "add", picture, given, "--library", lib_dir)
    text = cli("tags", "remove", folder, given, "--library", lib_dir).stdout.strip()
    assert text == f'took "{given}" off 1 picture of the 20 named (1 from person); tagging passes will not give it back'


BAD_LABELS = ["a\uffffb", "a\ufffeb", "caf\udce9", "a\ud800b", "x\x9by", "evil\u202egpj.exe", "zero\u200bwidth",
              "\ufeff", "line\u2028break", "a\ufdd0b"]


@pytest.mark.parametrize("label", BAD_LABELS)
def test_labels_that_are_not_plain_visible_text_are_refused(lib_dir, collection, label):
    picture = sorted(str(p) for p in collection)[0]
    r = cli("tags", "add", picture, label, "--library", lib_dir, code=2)
    assert r.stderr.startswith("Error: the label ") and len(r.stderr.strip().splitlines()) == 1
    assert ("not valid text" if "\udce9" in label or "\ud800" in label else "U+") in r.stderr
    r = cli("tag", "--labels", f"{label},plain", "--library", lib_dir, code=2)  # a pass's labels as well
    assert r.stderr.startswith("Error: the label ") and len(r.stderr.strip().splitlines()) == 1
    assert export(lib_dir) == []


def test_a_path_that_is_not_utf8_is_one_line(lib_dir):
    r = cli("tags", "add", "/tmp/caf\udce9.jpg", "x", "--library", lib_dir, code=2)
    assert r.stderr.strip() == "Error: /tmp/caf\\xe9.jpg is not in the library (its name is not valid UTF-8, and " \
                               "the library holds no such name)"


def test_labels_in_any_script_and_emoji_sequences_are_kept():
    from clipdex.library.names import check_name

    flag = "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    for label in ("plage", "Strand am Meer", "海滩", "می\u200cخواهم", "👨\u200d👩\u200d👧", flag):
        assert check_name(label, "label") == label


def test_probe_names_are_not_for_set_and_json_export_is_pointed_at(lib_dir):
    r = cli("tag", "--set", "probe:x", "--labels", SHAPE_LABELS, "--library", lib_dir, code=2)
    assert r.stderr.startswith("Error: 'probe:x': names starting with probe: are the passes probes give")
    r = cli("tags", "export", "--json", "--library", lib_dir, code=2)
    assert r.stderr.strip() == "Error: --json is for --format xmp's report; for the tags as JSON use --format json"


# -- the page's routes -------------------------------------------------------------------------------------------
@pytest.fixture()
def client(lib_dir):
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    app = create_app({"LIBRARY": lib_dir, "TESTING": True, "WARM_UP": False})
    return app.test_client()


PAGE = {"X-Clipdex": "1", "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


def test_the_page_adds_and_removes_a_tag(client, lib_dir):
    first = client.get("/api/images/1/tags").get_json()["tags"]
    assert [t["pass"] for t in first] == ["kind"]
    given = first[0]["label"]
    r = client.post("/api/images/1/tags", json={"label": "beach"}, headers=PAGE)
    assert r.status_code == 200
    assert r.get_json()["tags"][0] == {"label": "beach", "probability": 1.0, "source": "person", "pass": "person"}
    r = client.delete("/api/images/1/tags", json={"label": given}, headers=PAGE)
    assert r.status_code == 200 and [t["label"] for t in r.get_json()["tags"]] == ["beach"]
    assert r.get_json()["edit"]["tags_removed"] == {"kind": 1}
    assert [t["label"] for t in client.get("/api/images/1").get_json()["tags"]] == ["beach"]  # the detail view's
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)  # the removal sticks
    assert [t["label"] for t in client.get("/api/images/1/tags").get_json()["tags"]] == ["beach"]


@pytest.mark.parametrize("body", ['{"label": "a\\ud800b"}', '{"label": "a\\uffffb"}', '{"label": "\\ufeff"}',
                                  "[" * 100000 + "]" * 100000, '{"label": ' + "[" * 50000 + "]" * 50000 + "}"])
def test_labels_xml_cannot_hold_and_deep_json_are_400_not_500(client, body):
    before = client.get("/api/images/1/tags").get_json()["tags"]
    for method in ("POST", "DELETE"):
        r = client.open("/api/images/1/tags", method=method, data=body, content_type="application/json", headers=PAGE)
        assert r.status_code == 400 and set(r.get_json()) == {"status", "message"}, (r.status_code, r.data[:200])
    assert client.get("/api/images/1/tags").get_json()["tags"] == before


def test_removing_a_label_the_picture_lacks_stores_nothing(client, lib_dir):
    from clipdex.library.persontags import rejections

    r = client.delete("/api/images/1/tags", json={"label": "nosuchlabel"}, headers=PAGE)
    assert r.status_code == 400 and r.get_json()["message"].startswith("the picture has no tag 'nosuchlabel'")
    assert rejections(Library.open(lib_dir)) == []


def test_page_errors_take_the_one_json_shape(client):
    r = client.post("/api/images/999999/tags", json={"label": "x"}, headers=PAGE)
    assert (r.status_code, r.get_json()) == (404, {"status": 404, "message": "no picture with id 999999"})
    r = client.post("/api/images/1/tags", json={"label": ""}, headers=PAGE)
    assert (r.status_code, r.get_json()) == (400, {"status": 400, "message": "the label is empty"})
    r = client.post("/api/images/1/tags", json={"tag": "x"}, headers=PAGE)
    assert r.status_code == 400 and set(r.get_json()) == {"status", "message"}


@pytest.mark.parametrize("headers, body, status", [
    # a page elsewhere, in a current browser: refused by clipdex.web.security (Sec-Fetch-Site, Origin)
    ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "X-Clipdex": "1"}, "json", 403),
    ({"Origin": "http://evil.example"}, "form", 403),
    ({"Sec-Fetch-Site": "same-site"}, "form", 403),
    # an HTML form posted by a browser that sends neither header: no X-Clipdex, not JSON
    ({}, "form", 403),
    ({"Content-Type": "text/plain"}, "text", 403),
    # the header alone does not make a form a JSON request
    ({"X-Clipdex": "1"}, "form", 415),
])
def test_forged_cross_site_writes_are_refused(client, headers, body, status):
    before = client.get("/api/images/1/tags").get_json()["tags"]
    for method in ("POST", "DELETE"):
        if body == "json":
            r = client.open("/api/images/1/tags", method=method, json={"label": "pwned"}, headers=headers)
        elif body == "form":
            r = client.open("/api/images/1/tags", method=method, data={"label": before[0]["label"]}, headers=headers)
        else:
            r = client.open("/api/images/1/tags", method=method, data='{"label": "pwned"}', headers=headers)
        assert r.status_code == status and set(r.get_json()) == {"status", "message"}
    assert client.get("/api/images/1/tags").get_json()["tags"] == before


def test_in_a_browser_a_tag_is_added_and_removed_in_the_detail_view(browser, lib_dir):
    """Debian's chromium against the real app on loopback: tagedit.js lists, adds and removes tags."""
    import threading

    import waitress
    from playwright.sync_api import expect

    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    srv = waitress.create_server(create_app({"LIBRARY": lib_dir}), host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    url = f"http://127.0.0.1:{srv.effective_port}"
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        page.goto(url + "/?q=a+red+circle")
        page.locator("#grid .card").first.click()
        expect(page.locator("#detail")).to_be_visible()
        tags = page.locator("#detail-tags li")
        expect(tags.first.locator("button.tag-remove")).to_be_visible()  # the list is tagedit.js's own
        given = tags.first.get_attribute("data-label")
        assert given in SHAPES and "kind" in tags.first.get_attribute("title")
        expect(page.locator('#tag option[value="beach"]')).to_have_count(0)
        page.fill("#tag-add-label", "beach")
        page.keyboard.press("Enter")
        expect(page.locator('#detail-tags li[data-label="beach"]')).to_be_visible()
        expect(page.locator("#tag-add-label")).to_have_value("")
        expect(page.locator('#tag option[value="beach"]')).to_have_text("beach (1)")  # the filter knows it now
        remove = page.get_by_role("button", name=f"Remove tag {given}")
        assert "will not give it back" in remove.get_attribute("title")
        before = page.locator(f'#tag option[value="{given}"]').text_content()
        remove.click()
        expect(page.locator(f'#detail-tags li[data-label="{given}"]')).to_have_count(0)
        expect(page.locator(f'#tag option[value="{given}"]')).not_to_have_text(before)  # one picture fewer
        expect(page.locator("#tag-edit-error")).to_be_hidden()
        path = page.locator("#detail-path").text_content()
        rows = [r for r in export(lib_dir) if r["path"] == path]
        assert [(r["label"], r["source"]) for r in rows] == [("beach", "person")]
        page.fill("#tag-add-label", "x" * 100 + "y")  # the field stops at 100 characters: the server's limit
        assert len(page.locator("#tag-add-label").input_value()) == 100
        assert not errors, errors
    finally:
        context.close()
        srv.close()
