"""What a tag's label or a pass's name may be: text a person can read, that XMP and terminals carry as is.

Refused: empty, longer than :data:`MAX_NAME`, and any character that is not visible text (see
:func:`bad_character`), so no label ever makes an ill-formed sidecar or hides what it says.
"""

from __future__ import annotations

import unicodedata

from clipdex.errors import UsageError

#: Longest pass name or label a person may give.
MAX_NAME = 100
#: Format characters allowed in a name: the zero-width joiner and non-joiner (emoji sequences, Persian,
#: Indic scripts) and the tag characters of flag emoji; every other one is invisible or reorders the text.
JOINERS = frozenset("\u200c\u200d") | frozenset(map(chr, range(0xE0020, 0xE0080)))


def bad_character(text: str) -> str | None:
    """The first character of ``text`` a name may not hold, or None.

    Refused: controls (C0, DEL, C1), surrogates (a non-UTF-8 byte on the command line),
    non-characters (U+FFFE, U+FFFF, U+FDD0-U+FDEF: XML cannot hold them), line and paragraph
    separators, and invisible format characters (bidi overrides, zero-width space, a BOM).
    """
    for c in text:
        cat = unicodedata.category(c)
        if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and c not in JOINERS) \
                or (ord(c) & 0xFFFE) == 0xFFFE or 0xFDD0 <= ord(c) <= 0xFDEF:
            return c
    return None


def check_text(text: str, what: str = "label") -> str:
    """``text`` refused (:class:`UsageError`) when it holds a character no name may (:func:`bad_character`)."""
    c = bad_character(text)
    if c is None:
        return text
    shown = ascii(text[:40])
    if unicodedata.category(c) == "Cs":
        raise UsageError(f"the {what} {shown} is not valid text (a byte that is not UTF-8, from a terminal "
                         "or file in another encoding, or half of a UTF-16 pair)")
    kind = "a control character" if unicodedata.category(c) == "Cc" else "an invisible or non-text character"
    raise UsageError(f"the {what} {shown} holds {kind} (U+{ord(c):04X})")


def check_name(text: str, what: str = "pass name") -> str:
    """``text`` stripped, refused when empty, too long or holding characters no name may (:func:`check_text`)."""
    name = check_text((text or "").strip(), what)
    if not name:
        raise UsageError(f"the {what} is empty")
    if len(name) > MAX_NAME:
        raise UsageError(f"the {what} is too long ({len(name)} characters, limit {MAX_NAME})")
    return name
