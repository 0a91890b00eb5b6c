"""The duplicates page (``/duplicates``) and its JSON (``/api/duplicates``): groups side by side, keeper first.

Finding duplicates reads every vector and decodes candidates (in worker processes, each file under
a time limit), so an answer is kept per library generation, threshold and keeper rule: reloading
the page costs nothing until the library changes. The cost of one answer is bounded: the threshold
may not go below :func:`threshold_floor` (a lower one makes every picture a candidate of many
others), at most :data:`WEB_MAX_PAIRS` candidate pairs are checked, and one answer is computed at
a time; a request arriving meanwhile is answered 503 "busy" at once, never queued holding a
server thread. Like the API, the page refuses cross-site requests: another site's ``<img>`` must
not make the server compute.
"""

from __future__ import annotations

import threading

from flask import Blueprint, current_app, jsonify, render_template, request

from clipdex.duplicates import KEEP_RULES, default_threshold, find_duplicates
from clipdex.errors import LibraryError, UsageError
from clipdex.web.errors import APIError, message_for
from clipdex.web.security import OWN_SITES

bp = Blueprint("duplicates", __name__)
_lock = threading.Lock()
#: Candidate pairs one answer may check (about a minute of pixel checks on 2 cores).
WEB_MAX_PAIRS = 20_000
#: The lowest threshold the web accepts for CLIP models (the tiny demo model's default is lower: that one).
WEB_MIN_THRESHOLD = 0.5


def threshold_floor(lib) -> float:
    """The lowest candidate threshold accepted from the web for ``lib``'s model."""
    return min(WEB_MIN_THRESHOLD, default_threshold(lib))


@bp.before_request
def _same_site_only() -> None:
    sites = request.headers.getlist("Sec-Fetch-Site")
    if sites and (len(sites) > 1 or sites[0].strip().lower() not in OWN_SITES):
        raise APIError(403, f"cross-site {request.method} refused ({request.path[:100]})")


def _arguments(lib) -> tuple[float | None, str]:
    raw, keep = request.args.get("threshold", ""), request.args.get("keep", "largest") or "largest"
    try:
        threshold = float(raw) if raw.strip() else None
    except ValueError:
        raise APIError(400, f"threshold must be a number, got {raw[:40]!r}") from None
    if threshold is not None and not threshold <= 1.0:
        raise APIError(400, f"threshold must be at most 1, got {threshold}")
    if threshold is not None and lib is not None and threshold < threshold_floor(lib):
        raise APIError(400, f"threshold must be at least {threshold_floor(lib):g} here (lower ones make every "
                            f"picture a candidate of many others), got {threshold}")
    if keep not in KEEP_RULES:
        raise APIError(400, f"keep must be one of {', '.join(KEEP_RULES)}, got {keep[:40]!r}")
    return threshold, keep


def _groups(lib, threshold: float | None, keep: str) -> list[dict]:
    """The groups as JSON dicts, computed once per generation and arguments; 503 while another is computed."""
    cache = current_app.extensions.setdefault("clipdex_duplicates", {})
    key = (lib.generation, threshold, keep)
    if key in cache:
        return cache[key]
    if not _lock.acquire(blocking=False):
        raise APIError(503, "busy finding duplicates for another request; try again in a moment",
                       {"Retry-After": "10"})
    try:
        if key not in cache:
            try:
                found = [g.as_dict() for g in find_duplicates(lib, threshold, keep, max_pairs=WEB_MAX_PAIRS)]
            except UsageError as exc:
                raise APIError(400, str(exc)) from None
            cache.clear()
            cache[key] = found
        return cache[key]
    finally:
        _lock.release()


def _library():
    return current_app.extensions["clipdex"].library()


@bp.get("/api/duplicates")
def api_duplicates():
    """``{"groups": [{"kind", "keeper", "pictures": [{"id", "path", ...}]}]}``; arguments as the CLI's."""
    lib = _library()
    threshold, keep = _arguments(lib)
    return jsonify({"groups": _groups(lib, threshold, keep)})


@bp.get("/duplicates")
def page():
    """The groups side by side, with thumbnails; the library's problem in words when there is none."""
    shown = {"keep": "largest", "threshold": request.args.get("threshold", "")[:40], "rules": KEEP_RULES}
    try:
        lib = _library()
    except LibraryError as exc:
        return render_template("duplicates.html", groups=[], problem=message_for(exc), **shown)
    try:
        threshold, keep = _arguments(lib)
        shown["keep"] = keep
        groups, problem = _groups(lib, threshold, keep), None
    except APIError as exc:
        return render_template("duplicates.html", groups=[], problem=exc.message, **shown), exc.status, exc.headers
    except LibraryError as exc:
        groups, problem = [], message_for(exc)
    return render_template("duplicates.html", groups=groups, problem=problem, **shown)
