"""The browser UI and JSON API: ``create_app(config)`` builds the Flask application.

Config keys: ``LIBRARY`` (folder), ``MODEL`` (optional spec, must match the library's),
``MAX_CONTENT_LENGTH`` (upload limit in bytes), ``WARM_UP`` (load model and index now).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from clipdex.web import api, errors, pages
from clipdex.web.state import WebState


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=20 * 1024 * 1024, WARM_UP=True, MODEL=None, JSON_SORT_KEYS=False)
    app.config.update(config or {})
    if "LIBRARY" not in app.config:
        from clipdex.library import default_library_path

        app.config["LIBRARY"] = default_library_path()
    state = WebState(Path(app.config["LIBRARY"]), app.config["MODEL"])
    app.extensions["clipdex"] = state
    errors.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    if app.config["WARM_UP"]:
        state.warm_up()
    return app
