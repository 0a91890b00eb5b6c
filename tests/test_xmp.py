"""XMP sidecars (issue #10): written by ``clipdex tags export --format xmp`` and read back with the real
``exiftool``, the tool photographers use: keywords in ``dc:subject``, probability and pass in the
clipdex namespace, foreign fields of an existing sidecar untouched, originals never written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.synthetic import SHAPES, write_collection
from tests.conftest import cli

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (Debian: libimage-exiftool-perl)")

SHAPE_LABELS = ",".join(SHAPES)
# A sidecar darktable/digiKam left earlier: keywords of its own, and fields clipdex knows nothing about.
FOREIGN = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmp:Rating="4"
    darktable:xmp_version="5">
   <dc:creator><rdf:Seq><rdf:li>Ann Smith</rdf:li></rdf:Seq></dc:creator>
   <dc:subject><rdf:Bag><rdf:li>family</rdf:li><rdf:li>{shared}</rdf:li></rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>people|family</rdf:li></rdf:Bag></lr:hierarchicalSubject>
   <darktable:history><rdf:Seq><rdf:li darktable:operation="exposure" darktable:enabled="1"/></rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def exif(*paths: Path) -> list[dict]:
    """What exiftool reads from the sidecars (structures kept as structures)."""
    out = subprocess.run([EXIFTOOL, "-j", "-struct", "-G1", "-a", *map(str, paths)], capture_output=True, text=True,
                         check=True, timeout=60)
    return json.loads(out.stdout)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def originals(pics: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).digest(), p.stat().st_mtime_ns) for p in pics.rglob("*.jpg")}


@pytest.fixture()
def own(tmp_path) -> tuple[str, Path]:
    """A small library of its own (24 pictures in colour folders), tagged by shape as pass "kind"."""
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=5)
    lib = Library.create(tmp_path / "lib")
    Indexer(lib, TINY_MODEL, workers=1, progress=False).run([str(pics)])
    lib.close()
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", str(tmp_path / "lib"))
    return str(tmp_path / "lib"), pics


def export_rows(lib_dir: str) -> dict[str, list[dict]]:
    rows = json.loads(cli("tags", "export", "--format", "json", "--library", lib_dir).stdout)
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["path"], []).append(r)
    return out


def test_sidecars_round_trip_through_exiftool(own):
    lib_dir, pics = own
    tagged = export_rows(lib_dir)
    first = sorted(tagged)[0]
    cli("tags", "add", first, "keeper", "--library", lib_dir)
    merged_into = sorted(tagged)[1]
    shared = tagged[merged_into][0]["label"]  # a keyword the editor had already, which clipdex also gives
    Path(merged_into + ".xmp").write_text(FOREIGN.replace("{shared}", shared), encoding="utf-8")
    foreign_before = exif(Path(merged_into + ".xmp"))[0]
    before = originals(pics)

    out = cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.strip()
    assert out == "24 pictures: 23 sidecars created, 1 merged, 0 unchanged, 0 left alone"
    assert originals(pics) == before  # no picture was written, not even touched
    tagged = export_rows(lib_dir)
    read = {r["SourceFile"].removesuffix(".xmp"): r for r in exif(*(Path(p + ".xmp") for p in sorted(tagged)))}
    assert set(read) == set(tagged)
    for path, tags in tagged.items():
        got = read[path]
        labels = [t["label"] for t in tags]
        if path == merged_into:
            assert as_list(got["XMP-dc:Subject"]) == ["family", *dict.fromkeys([shared, *labels])]
            assert as_list(got.get("XMP-clipdex:Keywords", [])) == [x for x in labels if x != shared]  # its own only
        else:
            assert sorted(as_list(got["XMP-dc:Subject"])) == sorted(labels)
        entries = {(e["Label"], e["Pass"], e["Source"], round(float(e["Probability"]), 4))
                   for e in as_list(got["XMP-clipdex:Tags"])}
        assert entries == {(t["label"], t["pass"], t["source"], round(t["probability"], 4)) for t in tags}
    assert {e["Label"]: e["Source"] for e in as_list(read[first]["XMP-clipdex:Tags"])}["keeper"] == "person"

    # every foreign field of the existing sidecar reads back as it was
    after = read[merged_into]
    for key, value in foreign_before.items():
        if key.startswith(("XMP-", "XMP:")) and key != "XMP-dc:Subject":
            assert after[key] == value, key
    assert as_list(after["XMP-lr:HierarchicalSubject"]) == ["people|family"] and after["XMP-xmp:Rating"] == 4
    assert as_list(after["XMP-dc:Creator"]) == ["Ann Smith"] and after["XMP-darktable:Xmp_version"] == 5
    assert as_list(after["XMP-darktable:History"])[0]["Operation"] == "exposure"


def test_merging_again_takes_out_only_what_clipdex_put_there(own):
    lib_dir, pics = own
    tagged = export_rows(lib_dir)
    picture = sorted(tagged)[1]
    shared = tagged[picture][0]["label"]
    Path(picture + ".xmp").write_text(FOREIGN.replace("{shared}", shared), encoding="utf-8")
    cli("tags", "add", picture, "keeper", "--library", lib_dir)
    cli("tags", "export", "--format", "xmp", "--library", lib_dir)
    again = json.loads(cli("tags", "export", "--format", "xmp", "--library", lib_dir, "--json").stdout)
    assert (again["created"], again["merged"], again["unchanged"]) == (0, 0, 24)  # nothing to change, nothing written

    cli("tags", "remove", picture, "keeper", "--library", lib_dir)
    cli("tags", "remove", picture, shared, "--library", lib_dir)  # clipdex no longer gives it: the editor's stays
    assert cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.startswith(
        "24 pictures: 0 sidecars created, 1 merged, 23 unchanged")
    got = exif(Path(picture + ".xmp"))[0]
    assert as_list(got["XMP-dc:Subject"]) == ["family", shared]
    assert "XMP-clipdex:Tags" not in got and "XMP-clipdex:Keywords" not in got


def test_into_a_folder_repeats_the_layout_and_writes_nothing_beside_the_pictures(own, tmp_path):
    lib_dir, pics = own
    into = tmp_path / "sidecars"
    report = json.loads(cli("tags", "export", "--format", "xmp", "--into", str(into), "--naming", "stem",
                            "--library", lib_dir, "--json").stdout)
    assert report["created"] == 24 and not report["skipped"]
    assert not list(pics.rglob("*.xmp"))
    expected = {p.relative_to(pics).with_suffix(".xmp") for p in pics.rglob("*.jpg")}
    assert {p.relative_to(into) for p in into.rglob("*.xmp")} == expected
    some = sorted(into.rglob("*.xmp"))[0]
    assert as_list(exif(some)[0]["XMP-dc:Subject"])[0] in SHAPES


def test_sidecars_clipdex_cannot_read_are_left_alone(own):
    lib_dir, pics = own
    tagged = sorted(export_rows(lib_dir))
    garbage = Path(tagged[0] + ".xmp")
    garbage.write_bytes(b"not xml at all \x00")
    entity = Path(tagged[1] + ".xmp")
    entity.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', encoding="utf-8")
    elsewhere = pics / "elsewhere.txt"
    elsewhere.write_text("keep me")
    link = Path(tagged[2] + ".xmp")
    link.symlink_to(elsewhere)
    out = cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.splitlines()
    assert out[0] == "24 pictures: 21 sidecars created, 0 merged, 0 unchanged, 3 left alone"
    assert any(str(garbage) in line and "not XML" in line for line in out[1:])
    assert any(str(entity) in line and "DTD" in line for line in out[1:])
    assert any(str(link) in line and "not a regular file" in line for line in out[1:])
    assert garbage.read_bytes() == b"not xml at all \x00" and link.is_symlink() and elsewhere.read_text() == "keep me"


def test_export_option_errors_are_one_line(own, tmp_path):
    lib_dir, _ = own
    r = cli("tags", "export", "--format", "xmp", "-o", str(tmp_path / "x"), "--library", lib_dir, code=2)
    assert r.stderr.startswith("Error: --output is for csv and json") and len(r.stderr.splitlines()) == 1
    r = cli("tags", "export", "--format", "csv", "--into", str(tmp_path / "d"), "--library", lib_dir, code=2)
    assert r.stderr.strip() == "Error: --into is for --format xmp"


def test_a_stem_two_pictures_would_share_is_left_alone(own, tmp_path):
    """clipdex indexes no raw files, so photo.jpg and photo.png (or IMG_1.HEIC and IMG_1.JPG) are two pictures
    with two sets of tags: one photo.xmp claiming both would be wrong for each."""
    from clipdex.synthetic import Sample, draw

    lib_dir, _ = own
    pair = tmp_path / "pair"
    pair.mkdir()
    draw(Sample("red", "star")).save(pair / "IMG_1.jpg", "JPEG")
    draw(Sample("blue", "star")).save(pair / "IMG_1.png", "PNG")
    Indexer(Library.open(lib_dir), TINY_MODEL, workers=1, progress=False).run([str(pair)])
    cli("tags", "add", str(pair / "IMG_1.jpg"), "from-the-jpeg", "--library", lib_dir)
    cli("tags", "add", str(pair / "IMG_1.png"), "from-the-png", "--library", lib_dir)
    out = cli("tags", "export", "--format", "xmp", "--naming", "stem", "--library", lib_dir).stdout.splitlines()
    assert out == ["26 pictures: 24 sidecars created, 0 merged, 0 unchanged, 1 left alone",
                   f"  {pair / 'IMG_1.xmp'}: left alone: IMG_1.jpg and IMG_1.png would share it "
                   "(--naming full gives each its own)"]
    assert sorted(p.name for p in pair.iterdir()) == ["IMG_1.jpg", "IMG_1.png"]
    cli("tags", "export", "--format", "xmp", "--library", lib_dir)  # full naming: one each
    assert as_list(exif(pair / "IMG_1.jpg.xmp")[0]["XMP-dc:Subject"]) == ["from-the-jpeg"]
    assert as_list(exif(pair / "IMG_1.png.xmp")[0]["XMP-dc:Subject"]) == ["from-the-png"]


def test_pictures_not_on_disk_get_no_sidecar_and_no_folder_is_made(own, tmp_path):
    lib_dir, pics = own
    gone = sorted(pics.rglob("*.jpg"))[0]
    gone.unlink()
    unmounted = pics / "red"
    n = len(list(unmounted.glob("*.jpg")))
    shutil.move(unmounted, tmp_path / "elsewhere")  # as if the drive holding it were not mounted
    out = cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.splitlines()
    assert out[0] == f"24 pictures: {23 - n} sidecars created, 0 merged, 0 unchanged, 2 left alone"
    assert f"  {gone}: left alone: the picture is not there (deleted or moved?)" in out
    assert f"  {unmounted}: left alone: the folder is not there (a drive not mounted?), so no sidecar for its " \
           f"{n} pictures" in out
    assert not unmounted.exists() and not Path(str(gone) + ".xmp").exists()
    report = json.loads(cli("tags", "export", "--format", "xmp", "--into", str(tmp_path / "sc"), "--library",
                            lib_dir, "--json").stdout)
    assert report["created"] == 23 - n and len(report["skipped"]) == 2


UTF16_DTD = ('<?xml version="1.0" encoding="{enc}"?>\n<!DOCTYPE x [<!ENTITY e "{e}">]>\n'
             '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>{body}</dc:title>'
             '</rdf:Description></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("codec, declared", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-16-le", "UTF-16"),
                                             ("utf-32", "UTF-32"), ("utf-8-sig", "UTF-8"), ("utf-8", "ISO-8859-1")])
def test_a_dtd_is_refused_in_any_encoding_before_an_entity_is_expanded(own, codec, declared):
    """The reviewer's sidecar, small: in UTF-16 it once slipped past a byte search for <!DOCTYPE and expat
    expanded its entity (a 16 MB file took 7 GB and was written back as 1.5 GB)."""
    lib_dir, _ = own
    sidecar = Path(sorted(export_rows(lib_dir))[0] + ".xmp")
    data = UTF16_DTD.format(enc=declared, e="A" * 4096, body="&e;" * 64)
    raw = (("\ufeff" if codec.endswith(("-be", "-le")) else "") + data).encode(codec)
    sidecar.write_bytes(raw)
    report = json.loads(cli("tags", "export", "--format", "xmp", "--library", lib_dir, "--json").stdout)
    assert [s["path"] for s in report["skipped"]] == [str(sidecar)] and report["created"] == 23
    assert sidecar.read_bytes() == raw  # untouched, nothing expanded into it
    reason = report["skipped"][0]["reason"]
    assert "DTD" in reason or (codec == "utf-32" and "not XML" in reason), reason


def test_no_sidecar_is_ever_ill_formed(own):
    """A label XML cannot hold, stored before labels were checked, leaves its sidecar alone instead."""
    import xml.etree.ElementTree as ET

    from sqlalchemy import select

    from clipdex.library.schema import TagRow

    lib_dir, pics = own
    lib = Library.open(lib_dir)
    with lib.session() as s:
        tag = s.scalars(select(TagRow).order_by(TagRow.image_id)).first()
        tag.label = "a\uffffb"
        s.commit()
    lib.close()
    report = json.loads(cli("tags", "export", "--format", "xmp", "--library", lib_dir, "--json").stdout)
    assert report["created"] == 23 and len(report["skipped"]) == 1
    assert report["skipped"][0]["reason"] == "left alone: a tag holds U+FFFF, which XML cannot hold (take it off " \
                                              "with clipdex tags remove)"
    for sidecar in pics.rglob("*.xmp"):
        ET.parse(sidecar)  # every one well-formed
    r = cli("tags", "add", str(sorted(pics.rglob("*.jpg"))[0]), "a\uffffb", "--library", lib_dir, code=2)
    assert r.stderr.strip() == "Error: the label 'a\\uffffb' holds an invisible or non-text character (U+FFFF)"


def test_pictures_under_a_root_name_get_their_sidecars_at_this_machines_mount(tmp_path, monkeypatch):
    """--root-name stores pictures as @NAME/...: sidecars go where this machine mounts NAME, and a machine that
    does not declare NAME writes none (never a relative @NAME folder in the current directory)."""
    mount = tmp_path / "archive"
    write_collection(mount, per_class=1, seed=5)
    lib_dir = str(tmp_path / "lib")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPDEX_MACHINE", "a")
    cli("index", str(mount), "--library", lib_dir, "--model", "tiny", "--workers", "1", "--root-name",
        f"archive={mount}")
    cli("tag", "--set", "kind", "--labels", SHAPE_LABELS, "--library", lib_dir)
    out = cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.strip()
    assert out == "24 pictures: 24 sidecars created, 0 merged, 0 unchanged, 0 left alone"
    assert len(list(mount.rglob("*.jpg.xmp"))) == 24
    monkeypatch.setenv("CLIPDEX_MACHINE", "b")
    out = cli("tags", "export", "--format", "xmp", "--library", lib_dir).stdout.splitlines()
    assert out == ["24 pictures: 0 sidecars created, 0 merged, 0 unchanged, 1 left alone",
                   "  @archive: left alone: the root name is not declared on this machine, so no sidecar for its "
                   "24 pictures"]
    assert not (tmp_path / "@archive").exists()
