"""Adding and removing a picture's tags from the page (``/api/images/<id>/tags``).

``GET`` lists the picture's tags with where each came from; ``POST {"label": ...}`` gives it
a person's tag and ``DELETE {"label": ...}`` takes the label off, whatever gave it, so that
no tagging pass gives it back (:mod:`clipdex.library.persontags`). Both answer the picture's
tags as they now are.

Writes are protected against cross-site requests twice. :mod:`clipdex.web.security` already
refuses any API request a browser marks cross-site (``Sec-Fetch-Site``) and any write from
another ``Origin``; a browser that sends neither (older ones, for form posts) is stopped
here: a write must carry the ``X-Clipdex`` header and a JSON body, which no HTML form can
send and which a page elsewhere could only send after a CORS preflight this server never
grants.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from clipdex.library.persontags import add_tag, remove_tag, tags_of
from clipdex.web.errors import APIError
from clipdex.web.media import image_row

bp = Blueprint("tagedit", __name__, url_prefix="/api")

#: The header the page's script sends with every write (any value; its presence is what counts).
WRITE_HEADER = "X-Clipdex"


@bp.before_request
def _only_from_the_page() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    if WRITE_HEADER not in request.headers:
        raise APIError(403, f"{request.method} refused: tag edits must carry the {WRITE_HEADER} header the "
                            "page sends (a request from another site cannot)")
    if not request.is_json:
        raise APIError(415, 'send the tag as JSON, e.g. {"label": "beach"}')


def _label() -> str:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # get_json's silent covers bad JSON, not JSON nested thousands deep
        raise APIError(400, 'send the tag as JSON, e.g. {"label": "beach"} (this JSON is nested too deeply)') \
            from None
    label = body.get("label") if isinstance(body, dict) else None
    if not isinstance(label, str):
        raise APIError(400, 'send the tag as JSON, e.g. {"label": "beach"}')
    return label


@bp.get("/images/<id:image_id>/tags")
def picture_tags(image_id: int):
    lib = current_app.extensions["clipdex"].library()
    image_row(lib, image_id)
    return jsonify({"id": image_id, "tags": tags_of(lib, image_id)})


@bp.post("/images/<id:image_id>/tags")
def add(image_id: int):
    lib = current_app.extensions["clipdex"].library()
    image_row(lib, image_id)
    edit = add_tag(lib, [image_id], _label())
    return jsonify({"id": image_id, "edit": edit.as_dict(), "tags": tags_of(lib, image_id)})


@bp.delete("/images/<id:image_id>/tags")
def remove(image_id: int):
    lib = current_app.extensions["clipdex"].library()
    image_row(lib, image_id)
    edit = remove_tag(lib, [image_id], _label())
    return jsonify({"id": image_id, "edit": edit.as_dict(), "tags": tags_of(lib, image_id)})
