"""The duplicates page (``/duplicates``) and its JSON (``/api/duplicates``): groups side by side, keeper first.

Finding duplicates reads every vector and decodes candidates, so an answer is kept per library
generation, threshold and keeper rule: reloading the page costs nothing until the library changes.
"""

from __future__ import annotations

import threading

from flask import Blueprint, current_app, jsonify, render_template, request

from clipdex.duplicates import KEEP_RULES, find_duplicates
from clipdex.errors import LibraryError
from clipdex.web.errors import APIError, message_for

bp = Blueprint("duplicates", __name__)
_lock = threading.Lock()


def _arguments() -> tuple[float | None, str]:
    raw, keep = request.args.get("threshold", ""), request.args.get("keep", "largest") or "largest"
    try:
        threshold = float(raw) if raw.strip() else None
    except ValueError:
        raise APIError(400, f"threshold must be a number, got {raw[:40]!r}") from None
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise APIError(400, f"threshold must be above 0 and at most 1, got {threshold}")
    if keep not in KEEP_RULES:
        raise APIError(400, f"keep must be one of {', '.join(KEEP_RULES)}, got {keep[:40]!r}")
    return threshold, keep


def _groups(threshold: float | None, keep: str) -> list[dict]:
    """The groups as JSON dicts, computed once per generation and arguments (one computation at a time)."""
    lib = current_app.extensions["clipdex"].library()
    cache = current_app.extensions.setdefault("clipdex_duplicates", {})
    key = (lib.generation, threshold, keep)
    with _lock:
        if key not in cache:
            cache.clear()
            cache[key] = [g.as_dict() for g in find_duplicates(lib, threshold, keep)]
        return cache[key]


@bp.get("/api/duplicates")
def api_duplicates():
    """``{"groups": [{"kind", "keeper", "pictures": [{"id", "path", ...}]}]}``; arguments as the CLI's."""
    threshold, keep = _arguments()
    return jsonify({"groups": _groups(threshold, keep)})


@bp.get("/duplicates")
def page():
    """The groups side by side, with thumbnails; the library's problem in words when there is none."""
    try:
        threshold, keep = _arguments()
    except APIError as exc:
        return render_template("duplicates.html", groups=[], problem=exc.message, keep="largest", rules=KEEP_RULES), 400
    try:
        groups, problem = _groups(threshold, keep), None
    except LibraryError as exc:
        groups, problem = [], message_for(exc)
    return render_template("duplicates.html", groups=groups, problem=problem, keep=keep, rules=KEEP_RULES)
