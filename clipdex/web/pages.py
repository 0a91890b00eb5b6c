"""The browser page: one HTML shell; the script talks to the JSON API."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from clipdex.errors import LibraryError
from clipdex.web.errors import message_for

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """The page, with the library's problem (no library yet, damaged) in words when it cannot be served."""
    state = current_app.extensions["clipdex"]
    try:
        lib = state.library()
        problem = None
        count = lib.info()["images"]
    except LibraryError as exc:
        problem, count = message_for(exc), 0
    return render_template("index.html", problem=problem, count=count, library=str(state.library_path),
                           demo=bool(current_app.config["DEMO"]))
