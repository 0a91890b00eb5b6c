"""The JSON API under ``/api`` (documented in the README)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request, send_file
from werkzeug.routing import IntegerConverter

from clipdex.errors import ClipdexError, DecodeError, UsageError
from clipdex.library import Library
from clipdex.library.catalog import picture_tags, tag_counts
from clipdex.models import Encoder
from clipdex.search.filters import day_range, parse_day, why_empty
from clipdex.search.matches import SORTS, closest_miss, find_matches, sort_hits, with_relevance
from clipdex.search.query import build_query, one_model, search
from clipdex.web import media
from clipdex.web.errors import APIError, error_response, message_for
from clipdex.web.media import image_row
from clipdex.web.uploads import DecoderBusy, UploadDecoder

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_K = 100
MAX_OFFSET = 10_000
MAX_QUERY = 500
CACHE_SECONDS = 7 * 24 * 3600


class IdConverter(IntegerConverter):
    """A picture id in a URL: ASCII digits only (werkzeug's int also took "\u0663", Arabic 3, as 3)."""

    regex = r"[0-9]+"


def state():
    return current_app.extensions["clipdex"]


def uploads() -> UploadDecoder:
    return current_app.extensions["clipdex_uploads"]


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def text_arg(name: str) -> str | None:
    raw = request.values.get(name)
    if raw is None or not raw.strip():
        return None
    if len(raw) > MAX_QUERY:
        raise APIError(400, f"{name} is too long ({len(raw)} characters, limit {MAX_QUERY})")
    return raw.strip()


def filters() -> dict:
    """The search filters of the request; ``from`` and ``to`` are days, both included (400 if not dates)."""
    try:
        first, last = (parse_day(request.values.get(name), name) for name in ("from", "to"))
        since, until = day_range(first, last)
    except UsageError as exc:
        raise APIError(400, str(exc)) from None
    return {"tag": text_arg("tag"), "folder": text_arg("folder"), "since": since, "until": until}


def flag_arg(name: str) -> bool:
    """A yes/no parameter: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``/absent (else 400)."""
    raw = (request.values.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise APIError(400, f"{name} must be 1 or 0, got {raw[:40]!r}")


def sort_arg() -> str:
    raw = request.values.get("sort") or "score"
    if raw not in SORTS:
        raise APIError(400, f"sort must be one of {', '.join(SORTS)}, got {raw[:40]!r}")
    return raw


#: How many times a search is run again when a model switch commits while it runs, before a 503.
SWITCH_RETRIES = 3


def run_search(make: Callable[[Encoder], tuple], exclude: set[int] | None = None) -> Response:
    """One page of results for the query ``make(encoder)`` builds: ``(vector, text)``, where ``text`` is
    ``(positive, negative)`` unit vectors of a text-only query (negative None without ``not=``), so relevance
    is calibrated on the positive text and ``matches=1`` (every match, paged; ``not=`` leaves out its own
    matches) is allowed; None for a query holding a picture.

    The query's model and the vectors it is compared with must be one model's: a search that a model
    switch overtook (see :func:`one_model`) is run again with the new model, then answered 503."""
    k = int_arg("k", 20, 1, MAX_K)
    offset = int_arg("offset", 0, 0, MAX_OFFSET)
    only_matches, sort = flag_arg("matches"), sort_arg()
    lib = state().library()
    for _ in range(SWITCH_RETRIES):
        encoder = state().encoder()
        held = lib.index().generation
        started = time.perf_counter()
        vector, text = make(encoder)
        if only_matches and text is None:
            raise APIError(400, "matches=1 needs a text query without a picture (relevance is calibrated for text)")
        timings = {"encode": time.perf_counter() - started}
        try:
            body = page(lib, encoder, vector, text, k, offset, only_matches, sort, exclude)
        except (ValueError, RuntimeError):  # widths differ: a switch overtook the search, or a real fault
            if one_model(lib, encoder, held):
                raise
            continue
        timings["search"] = time.perf_counter() - started - timings["encode"]
        if one_model(lib, encoder, held):
            break
    else:
        raise APIError(503, "the library is switching models: try again in a moment", {"Retry-After": "1"})
    response = jsonify(body)
    response.headers["Server-Timing"] = ", ".join(f"{name};dur={sec * 1000:.2f}" for name, sec in timings.items())
    return response


def page(lib: Library, encoder: Encoder, vector: np.ndarray, text: tuple | None, k: int, offset: int,
         only_matches: bool, sort: str, exclude: set[int] | None) -> dict:
    """The answer's body: one page of results, the number of matches, why a first page is empty."""
    positive, negative = text or (vector, None)
    if only_matches:
        every = sort_hits(find_matches(lib, encoder, positive, exclude=exclude, negative=negative, **filters()), sort)
        hits = every[offset:offset + k + 1]
    else:
        hits = search(lib, vector, k + 1, offset=offset, exclude=exclude, **filters())
        hits = with_relevance(lib, encoder, positive, hits) if text else hits
        hits = sort_hits(hits[:k], sort) + hits[k:]  # the page is sorted; the ranking chose it
    body = {
        "results": [h.as_dict() for h in hits[:k]],
        "k": k,
        "offset": offset,
        "has_more": len(hits) > k,
    }
    if only_matches:
        body["matches"] = len(every)
    if not hits and offset == 0:  # why nothing: reasons as data, the page words them
        body["why_empty"] = [r.as_dict() for r in why_empty(lib, **filters())]
        if only_matches and not body["why_empty"]:  # pictures pass the filters, none matches
            body["why_empty"] = [closest_miss(lib, encoder, positive, negative=negative, exclude=exclude,
                                              **filters())]
    return body


@bp.get("/health")
def health():
    try:
        lib = state().library()  # the settings every answer relies on must read back sound
        return jsonify({"status": "ok", "library": lib.location, "generation": lib.generation,
                        "model": str(lib.model_spec), "dim": lib.dim, "backend": state().loaded_backend})
    except Exception as exc:  # noqa: BLE001 - health reports, never raises
        return error_response(503, message_for(exc) if isinstance(exc, ClipdexError) else str(exc))


@bp.get("/info")
def info():
    return jsonify({**state().library().info(), "demo": bool(current_app.config["DEMO"])})


@bp.get("/search")
def search_text():
    q = text_arg("q")
    if q is None:
        raise APIError(400, "q is required (the text to search for)")
    negative = text_arg("not")

    def make(encoder: Encoder) -> tuple:
        vector = build_query(encoder, text=q, negative=negative)
        # relevance is the positive text's; not= ranks a page, or leaves out its own matches with matches=1
        return vector, ((build_query(encoder, text=q), build_query(encoder, text=negative)) if negative
                        else (vector, None))

    return run_search(make)


@bp.post("/search")
def search_upload():
    upload = request.files.get("image")
    if upload is None:
        raise APIError(400, "send the picture as a multipart form field named 'image'")
    data, q, negative = upload.read(), text_arg("q"), text_arg("not")

    def make(encoder: Encoder) -> tuple:
        try:
            pixels = uploads().decode(data, encoder.image_size, encoder.resize_mode)
        except DecoderBusy as exc:
            raise APIError(503, str(exc), {"Retry-After": "2"}) from None
        except DecodeError as exc:
            raise APIError(422, f"cannot use the uploaded file: {exc}") from None
        return build_query(encoder, text=q, negative=negative,
                           image_vector=encoder.encode_pixels(pixels[None])[0]), None

    return run_search(make)


@bp.get("/images/<id:image_id>/similar")
def similar(image_id: int):
    lib = state().library()
    image_row(lib, image_id)

    def make(_encoder: Encoder) -> tuple:
        found, vectors = lib.vectors_of([image_id])
        if not len(found):
            raise APIError(404, f"no picture with id {image_id}")
        return vectors[0], None

    return run_search(make, exclude={image_id})


@bp.get("/images/<id:image_id>")
def image(image_id: int):
    lib = state().library()
    row = image_row(lib, image_id)
    return jsonify({
        "id": row.id,
        "path": row.path,
        "name": os.path.basename(row.path),
        "width": row.width,
        "height": row.height,
        "size": row.size,
        "captured_at": row.captured_at.isoformat() if row.captured_at else None,
        "indexed_at": row.indexed_at.isoformat(),
        "tags": picture_tags(lib, image_id),
    })


@bp.get("/images/<id:image_id>/<any(thumbnail, preview):kind>")
def rendered(image_id: int, kind: str):
    """The 320 px thumbnail or the 1600 px preview, upright JPEG (cached a week: they rarely change)."""
    lib = state().library()
    row = image_row(lib, image_id)
    path, version = media.rendition(lib, row, kind, uploads())
    name = media.safe_name(f"{os.path.splitext(os.path.basename(row.path))[0]}-{kind}.jpg")
    response = send_file(path, mimetype="image/jpeg", download_name=name, etag=f"{kind[0]}{version}",
                         max_age=CACHE_SECONDS, conditional=True)
    response.cache_control.public = False  # someone's own pictures: no shared cache keeps them
    response.cache_control.private = True
    return response


@bp.get("/images/<id:image_id>/file")
def original(image_id: int):
    """The original file, typed by its bytes; revalidated on every use, so an edited picture shows at once."""
    lib = state().library()
    row = image_row(lib, image_id)
    source, mimetype = media.original(lib, row)
    response = send_file(source.file, mimetype=mimetype, download_name=media.download_name(row, mimetype),
                         etag=f"f{source.version}", last_modified=source.mtime, conditional=True)
    response.call_on_close(source.close)
    if response.status_code == 200:
        response.content_length = source.size
    response.cache_control.private = True
    response.cache_control.no_cache = True
    return response


@bp.get("/tags")
def tags():
    return jsonify({"tags": [{"label": label, "count": count} for label, count in tag_counts(state().library())]})
