"""Pictures served by id only: the original file, and cached JPEG renditions.

A file is served only if its id is indexed and its real path (symlinks resolved) lies
inside a folder that was given to ``clipdex index``; no request parameter is ever a path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from clipdex.errors import DecodeError
from clipdex.imaging import open_image
from clipdex.library import Library
from clipdex.library.catalog import picture
from clipdex.library.schema import ImageRow
from clipdex.web.errors import APIError

SIZES = {"thumbnail": 320, "preview": 1600}


def image_row(lib: Library, image_id: int) -> ImageRow:
    row = picture(lib, image_id)
    if row is None:
        raise APIError(404, f"no picture with id {image_id}")
    return row


def source_path(lib: Library, row: ImageRow) -> Path:
    """The real file behind ``row``, checked to lie inside an indexed folder."""
    real = os.path.realpath(row.path)
    inside = False
    for root in lib.roots():
        root_real = os.path.realpath(root)
        if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
            inside = True
            break
    if not inside:
        raise APIError(404, f"picture {row.id} is not inside an indexed folder")
    if not os.path.isfile(real):
        raise APIError(404, f"picture {row.id} is no longer on disk")
    return Path(real)


def rendition(lib: Library, row: ImageRow, kind: str) -> Path:
    """An upright JPEG of at most ``SIZES[kind]`` px, made on first request and cached."""
    size = SIZES[kind]
    cache = lib.path / "thumbs"
    target = cache / f"{row.id}-{row.content_hash[:16]}-{size}.jpg"
    if target.is_file():
        return target
    source = source_path(lib, row)
    try:
        image = open_image(source, target_size=size).image
    except DecodeError as exc:
        raise APIError(422, f"picture {row.id} cannot be decoded: {exc}") from None
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    cache.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        image.save(fh, "JPEG", quality=85, optimize=True)
    os.replace(tmp, target)
    return target
