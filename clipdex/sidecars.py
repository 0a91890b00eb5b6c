"""XMP sidecars for photo editors: a picture's tags as ``dc:subject`` keywords, merged into what is there.

digiKam, darktable and Lightroom read keywords from ``dc:subject``. A sidecar is named
``photo.jpg.xmp`` by default (digiKam's and darktable's name for it); ``stem`` naming gives
``photo.xmp`` (Lightroom's and Capture One's, which Lightroom reads for raw files only).

Besides the keywords, a sidecar gets a ``clipdex`` namespace (:data:`NS`): ``clipdex:tags``,
one entry per tag with its label, probability, pass and source, and ``clipdex:keywords``, the
keywords clipdex itself put into ``dc:subject``. An existing sidecar is merged, never
clobbered: every other element and keyword stays; keywords clipdex put there earlier and no
longer gives are taken out again, and a keyword that was there before clipdex is never
touched. A sidecar that is not XMP (not XML, a DTD, no ``rdf:RDF``) or not a regular file is
left alone and reported. Pictures are never opened for writing: a sidecar replaces itself
atomically (its permissions kept), and one whose name is a picture's is refused.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from clipdex.atomicfile import read_regular, write_atomic_with
from clipdex.errors import UsageError
from clipdex.library.schema import ImageRow
from clipdex.library.tags import export_rows

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

NS = "http://ns.clipdex.dev/xmp/1.0/"
X = "adobe:ns:meta/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
#: Prefixes written for the namespaces sidecars usually hold (others keep the prefix their file gave them).
KNOWN_PREFIXES = {"x": X, "rdf": RDF, "dc": DC, "clipdex": NS, "xmp": "http://ns.adobe.com/xap/1.0/",
                  "xmpMM": "http://ns.adobe.com/xap/1.0/mm/", "lr": "http://ns.adobe.com/lightroom/1.0/",
                  "digiKam": "http://www.digikam.org/ns/1.0/", "darktable": "http://darktable.sf.net/",
                  "exif": "http://ns.adobe.com/exif/1.0/", "tiff": "http://ns.adobe.com/tiff/1.0/",
                  "photoshop": "http://ns.adobe.com/photoshop/1.0/", "crs": "http://ns.adobe.com/camera-raw-settings/1.0/"}
NAMINGS = ("full", "stem")
MAX_SIDECAR = 16 * 1024 * 1024
PACKET_START = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
PACKET_END = '\n<?xpacket end="w"?>\n'


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


@dataclass
class SidecarReport:
    """What an export did: sidecars created, merged into, already up to date, and left alone (with why)."""

    created: int = 0
    merged: int = 0
    unchanged: int = 0
    skipped: list[dict] = field(default_factory=list)
    pictures: int = 0

    def as_dict(self) -> dict:
        return {"pictures": self.pictures, "created": self.created, "merged": self.merged,
                "unchanged": self.unchanged, "skipped": self.skipped}


def sidecar_name(picture: str, naming: str = "full") -> str:
    """``photo.jpg`` -> ``photo.jpg.xmp`` (``full``) or ``photo.xmp`` (``stem``)."""
    if naming not in NAMINGS:
        raise UsageError(f"unknown sidecar naming {naming!r} (use {' or '.join(NAMINGS)})")
    return (picture if naming == "full" else os.path.splitext(picture)[0]) + ".xmp"


class NotXMP(Exception):
    """An existing sidecar clipdex will not merge into (the message says why)."""


def _parse(data: bytes) -> ET.Element:
    """The sidecar's XML, its namespace prefixes registered so they are written back as they were."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise NotXMP("it declares a DTD or entities, which XMP never does")
    parser = ET.XMLPullParser(events=("start-ns",))
    try:
        parser.feed(data)
        parser.close()
    except ET.ParseError as exc:
        raise NotXMP(f"it is not XML ({exc})") from None
    for prefix, uri in (event for kind, event in parser.read_events() if kind == "start-ns"):
        if prefix and uri not in KNOWN_PREFIXES.values() and not re.fullmatch(r"ns\d+", prefix):
            ET.register_namespace(prefix, uri)
    return ET.fromstring(data)


def _description(root: ET.Element) -> tuple[ET.Element, ET.Element]:
    """``(rdf:RDF, the rdf:Description clipdex writes into)``: the one holding dc:subject, else the first."""
    rdf = root if root.tag == _q(RDF, "RDF") else root.find(f".//{_q(RDF, 'RDF')}")
    if rdf is None:
        raise NotXMP("it holds no rdf:RDF")
    descriptions = rdf.findall(_q(RDF, "Description"))
    for d in descriptions:
        if d.find(_q(DC, "subject")) is not None:
            return rdf, d
    if descriptions:
        return rdf, descriptions[0]
    return rdf, ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})


def _bag_items(parent: ET.Element, prop: str) -> list[str]:
    node = parent.find(prop)
    if node is None:
        return []
    return [(li.text or "").strip() for li in node.iter(_q(RDF, "li")) if (li.text or "").strip()]


def _set_bag(parent: ET.Element, prop: str, items: list[str] | list[dict]) -> None:
    """Replace property ``prop`` of ``parent`` with an rdf:Bag of ``items`` (texts, or structs of texts)."""
    old = parent.find(prop)
    at = list(parent).index(old) if old is not None else len(parent)
    if old is not None:
        parent.remove(old)
    if not items:
        return
    node = ET.Element(prop)
    bag = ET.SubElement(node, _q(RDF, "Bag"))
    for item in items:
        if isinstance(item, dict):
            li = ET.SubElement(bag, _q(RDF, "li"), {_q(RDF, "parseType"): "Resource"})
            for key, value in item.items():
                ET.SubElement(li, _q(NS, key)).text = str(value)
        else:
            ET.SubElement(bag, _q(RDF, "li")).text = item
    parent.insert(at, node)


def new_sidecar() -> ET.Element:
    """An empty XMP packet body: x:xmpmeta / rdf:RDF / one rdf:Description."""
    root = ET.Element(_q(X, "xmpmeta"))
    rdf = ET.SubElement(root, _q(RDF, "RDF"))
    ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})
    return root


def merge(root: ET.Element, tags: list[dict]) -> None:
    """Put ``tags`` (``label``, ``probability``, ``pass``, ``source``) into the sidecar ``root``, in place."""
    _, desc = _description(root)
    subject, ours = _q(DC, "subject"), _q(NS, "keywords")
    keywords = _bag_items(desc, subject)
    added_before = set(_bag_items(desc, ours))
    labels = list(dict.fromkeys(t["label"] for t in tags))
    keywords = [k for k in keywords if k not in added_before or k in labels]
    added = [k for k in keywords if k in added_before]
    for label in labels:
        if label not in keywords:
            keywords.append(label)
            added.append(label)
    _set_bag(desc, subject, keywords)
    _set_bag(desc, ours, added)
    _set_bag(desc, _q(NS, "tags"), [{"label": t["label"], "probability": f"{t['probability']:.4f}",
                                      "pass": t["pass"], "source": t["source"]} for t in tags])


def render(root: ET.Element) -> bytes:
    """The sidecar as an XMP packet (UTF-8)."""
    for prefix, uri in KNOWN_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    ET.indent(root, space=" ")
    return (PACKET_START + ET.tostring(root, encoding="unicode") + PACKET_END).encode("utf-8")


def _write(target: Path, data: bytes) -> None:
    """Replace ``target`` atomically with ``data``, keeping its permissions (new files: as the umask says)."""
    try:
        mode = os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        os.chmod(tmp, mode)

    write_atomic_with(target, write)


def update_sidecar(target: Path, tags: list[dict]) -> str:
    """Create or merge the sidecar at ``target``: ``"created"``, ``"merged"`` or ``"unchanged"``.

    Raises :class:`NotXMP` for an existing file that is not one clipdex may merge into.
    """
    if os.path.lexists(target):
        if not target.is_file() or target.is_symlink():
            raise NotXMP("it is not a regular file")
        data = read_regular(target, MAX_SIDECAR)
        if data is None:
            raise NotXMP(f"it is not a regular file of at most {MAX_SIDECAR // 2**20} MB")
        root = _parse(data)
        merge(root, tags)
        out = render(root)
        if out == data:
            return "unchanged"
        _write(target, out)
        return "merged"
    if not tags:
        return "unchanged"
    root = new_sidecar()
    merge(root, tags)
    target.parent.mkdir(parents=True, exist_ok=True)
    _write(target, render(root))
    return "created"


def layout_base(lib: Library, paths: list[str]) -> str:
    """The folder whose layout ``--into`` repeats: the common folder of the library's roots and ``paths``."""
    folders = [r if os.path.isdir(r) else os.path.dirname(r) for r in lib.roots()]
    folders += [os.path.dirname(p) for p in paths]
    return os.path.commonpath(folders) if folders else os.sep


def export_sidecars(lib: Library, into: str | Path | None = None, naming: str = "full") -> SidecarReport:
    """Write every tagged picture's sidecar: next to it, or under ``into`` in the pictures' own layout.

    Pictures without tags get no new sidecar, but an existing one loses what clipdex put
    there before. Pictures sharing a sidecar (``stem`` naming: a raw file and its JPEG) put
    all their tags in it. Originals are never written; files named like a picture are refused.
    """
    sidecar_name("x", naming)
    by_path: dict[str, list[dict]] = {}
    for row in export_rows(lib):
        by_path.setdefault(row["path"], []).append(row)
    with lib.session() as s:
        every = list(s.scalars(select(ImageRow.path).order_by(ImageRow.path)))
    pictures = set(every)
    report = SidecarReport(pictures=len(every))
    base = layout_base(lib, every) if into is not None else None
    targets: dict[Path, list[dict]] = {}  # with stem naming, photo.cr2 and photo.jpg share photo.xmp: both tags
    for path in every:
        if into is None:
            target = Path(sidecar_name(path, naming))
        else:
            target = Path(into) / sidecar_name(os.path.relpath(path, base), naming)
        targets.setdefault(target, []).extend(by_path.get(path, []))
    for target, tags in targets.items():
        if str(target) in pictures or os.path.abspath(target) in pictures:
            report.skipped.append({"path": str(target), "reason": "a picture of the library has this name"})
            continue
        if not tags and not os.path.lexists(target):
            continue
        try:
            outcome = update_sidecar(target, tags)
        except NotXMP as exc:
            report.skipped.append({"path": str(target), "reason": f"left alone: {exc}"})
            continue
        except OSError as exc:
            report.skipped.append({"path": str(target), "reason": f"cannot write: {exc.strerror or exc}"})
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report
