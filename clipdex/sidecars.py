"""XMP sidecars for photo editors: a picture's tags as ``dc:subject`` keywords, merged into what is there.

digiKam, darktable and Lightroom read keywords from ``dc:subject``. A sidecar is named
``photo.jpg.xmp`` by default (digiKam's and darktable's name for it); ``stem`` naming gives
``photo.xmp`` (Lightroom's and Capture One's, which Lightroom reads for raw files only).

Besides the keywords, a sidecar gets a ``clipdex`` namespace (:data:`NS`): ``clipdex:tags``,
one entry per tag with its label, probability, pass and source, and ``clipdex:keywords``, the
keywords clipdex itself put into ``dc:subject``. An existing sidecar is merged, never
clobbered: every other element and keyword stays; keywords clipdex put there earlier and no
longer gives are taken out again, and a keyword that was there before clipdex is never
touched. A sidecar that is not XMP (not XML, a DTD in whatever encoding, no ``rdf:RDF``) or
not a regular file is left alone and reported, and so is one that would hold a character XML
cannot: clipdex never writes an ill-formed file. Pictures are never opened for writing: a
sidecar replaces itself atomically (its permissions kept), and one whose name is a picture's
is refused. A picture not on disk gets no sidecar, and no folder is made beside pictures.
"""

from __future__ import annotations

import functools
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from xml.parsers import expat

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
#: A character XML 1.0 cannot hold (controls, surrogates, U+FFFE, U+FFFF).
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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


class _Refused(Exception):
    """Raised from inside expat the moment a sidecar declares a DTD or an entity."""


def _refuse(*_args) -> None:
    raise _Refused


def _parse(data: bytes) -> ET.Element:
    """The sidecar's XML, its namespace prefixes registered so they are written back as they were.

    A first pass with expat itself refuses a DTD or entity declaration the moment the parser
    meets one, in whatever encoding the file is (a byte search misses ``<\\0!\\0D...`` in
    UTF-16), so no entity is ever expanded; only then does ElementTree read the file.
    """
    check = expat.ParserCreate(namespace_separator=" ")
    check.StartDoctypeDeclHandler = check.EntityDeclHandler = check.UnparsedEntityDeclHandler = _refuse
    check.ExternalEntityRefHandler = _refuse
    prefixes: list[tuple[str, str]] = []
    check.StartNamespaceDeclHandler = lambda prefix, uri: prefixes.append((prefix or "", uri or ""))
    try:
        check.Parse(data, True)
    except _Refused:
        raise NotXMP("it declares a DTD or entities, which XMP never does") from None
    except (expat.ExpatError, ValueError) as exc:
        raise NotXMP(f"it is not XML ({exc})") from None
    for prefix, uri in prefixes:
        if prefix and uri not in KNOWN_PREFIXES.values() and not re.fullmatch(r"ns\d+", prefix):
            ET.register_namespace(prefix, uri)
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise NotXMP(f"it is not XML ({exc})") from None


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
    """The sidecar as an XMP packet (UTF-8); :class:`NotXMP` if it would hold a character XML cannot hold."""
    for prefix, uri in KNOWN_PREFIXES.items():
        ET.register_namespace(prefix, uri)
    ET.indent(root, space=" ")
    text = ET.tostring(root, encoding="unicode")
    bad = NOT_XML.search(text)
    if bad:  # a label stored before labels were checked: ElementTree would write it raw, and ill-formed
        raise NotXMP(f"a tag holds U+{ord(bad.group()):04X}, which XML cannot hold (take it off with "
                     "clipdex tags remove)")
    return (PACKET_START + text + PACKET_END).encode("utf-8")


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


def update_sidecar(target: Path, tags: list[dict], make_folder: bool = False) -> str:
    """Create or merge the sidecar at ``target``: ``"created"``, ``"merged"`` or ``"unchanged"``.

    Raises :class:`NotXMP` for an existing file that is not one clipdex may merge into. The
    folder is made only with ``make_folder`` (``--into``); beside the pictures it must be there.
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
    if make_folder:
        target.parent.mkdir(parents=True, exist_ok=True)
    _write(target, render(root))
    return "created"


def layout_base(lib: Library, paths: list[str]) -> str:
    """The folder whose layout ``--into`` repeats: the common folder of the library's roots and ``paths``."""
    folders = [r if os.path.isdir(r) else os.path.dirname(r) for r in lib.roots()]
    folders += [os.path.dirname(p) for p in paths]
    return os.path.commonpath(folders) if folders else os.sep


def _absent(paths: list[str]) -> tuple[list[str], list[dict]]:
    """``(the pictures on disk, what to report for the others)``: one entry per missing picture whose
    folder is there, one per missing folder (an unmounted drive, a folder moved away) with its count."""
    isdir = functools.lru_cache(maxsize=None)(os.path.isdir)
    present, missing, gone = [], [], {}
    for path in paths:
        if os.path.lexists(path):
            present.append(path)
            continue
        if not os.path.isabs(path):  # @NAME/...: a root name not declared on this machine (--root-name)
            name = path.split("/", 1)[0]
            gone[name] = gone.get(name, 0) + 1
            continue
        folder = os.path.dirname(path)
        if isdir(folder):
            missing.append({"path": path, "reason": "left alone: the picture is not there (deleted or moved?)"})
            continue
        while os.path.dirname(folder) != folder and not isdir(os.path.dirname(folder)):
            folder = os.path.dirname(folder)
        gone[folder] = gone.get(folder, 0) + 1
    for folder, n in gone.items():
        where = "the root name is not declared on this machine" if not os.path.isabs(folder) else \
            "the folder is not there (a drive not mounted?)"
        missing.append({"path": folder, "reason": f"left alone: {where}, so no sidecar for its {n} "
                                                  f"picture{'s' if n != 1 else ''}"})
    return present, missing


def export_sidecars(lib: Library, into: str | Path | None = None, naming: str = "full") -> SidecarReport:
    """Write every tagged picture's sidecar: next to it, or under ``into`` in the pictures' own layout.

    Pictures without tags get no new sidecar, but an existing one loses what clipdex put
    there before. A picture that is not on disk (deleted, or on a drive not mounted) gets
    none, and no folder is ever made beside the pictures; a sidecar name two pictures would
    share (``stem`` naming: ``photo.jpg`` and ``photo.png``) is left alone, since clipdex
    indexes no raw files and two pictures are two sets of tags. Both are reported. Originals
    are never written; files named like a picture are refused.
    """
    sidecar_name("x", naming)
    by_path: dict[str, list[dict]] = {}
    for row in export_rows(lib):
        by_path.setdefault(row["path"], []).append(row)
    with lib.session() as s:
        every = [lib.places.local(p) for p in s.scalars(select(ImageRow.path).order_by(ImageRow.path))]
    pictures = set(every)
    report = SidecarReport(pictures=len(every))
    present, report.skipped = _absent(every)
    base = layout_base(lib, present) if into is not None else None
    targets: dict[Path, list[str]] = {}
    for path in present:
        if into is None:
            target = Path(sidecar_name(path, naming))
        else:
            target = Path(into) / sidecar_name(os.path.relpath(path, base), naming)
        targets.setdefault(target, []).append(path)
    for target, owners in targets.items():
        if str(target) in pictures or os.path.abspath(target) in pictures:
            report.skipped.append({"path": str(target), "reason": "a picture of the library has this name"})
            continue
        if len(owners) > 1:
            names = " and ".join(os.path.basename(p) for p in owners)
            report.skipped.append({"path": str(target), "reason": f"left alone: {names} would share it "
                                                                  "(--naming full gives each its own)"})
            continue
        tags = by_path.get(owners[0], [])
        if not tags and not os.path.lexists(target):
            continue
        try:
            outcome = update_sidecar(target, tags, make_folder=into is not None)
        except NotXMP as exc:
            report.skipped.append({"path": str(target), "reason": f"left alone: {exc}"})
            continue
        except OSError as exc:
            report.skipped.append({"path": str(target), "reason": f"cannot write: {exc.strerror or exc}"})
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report
