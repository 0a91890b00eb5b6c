"""The browser UI and JSON API: ``create_app(config)`` builds the Flask application.

Config keys: ``LIBRARY`` (folder), ``MODEL`` (optional spec, must match the library's),
``BACKEND`` (``auto``, ``onnx`` or ``torch``: what runs the model, see :class:`clipdex.models.Encoder`),
``DEMO`` (the library is the generated demo one, standing in for the user's own),
``BIND_HOST`` (the address the server listens on; default 127.0.0.1) and ``ALLOWED_HOSTS``
(more names requests may be addressed to, see :mod:`clipdex.web.security`),
``MAX_CONTENT_LENGTH`` (upload limit in bytes), ``UPLOAD_DECODER`` (keyword arguments for
:class:`clipdex.web.uploads.UploadDecoder`), ``WARM_UP`` (load model and index now).

Flask and the routes are imported inside :func:`create_app`, so the upload decoder's worker
processes, which import :mod:`clipdex.web.uploads`, stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from flask import Flask

#: Largest upload (bytes); the server refuses bigger bodies before reading them.
MAX_UPLOAD_BYTES = 20_000_000


def _marked_demo(path: Path | str) -> bool:
    """True when the library at ``path`` is marked as the generated demo one (False if it cannot be read)."""
    from clipdex.library import Library

    try:
        lib = Library.open(path)
    except Exception:  # noqa: BLE001 - no library, or a damaged one: the page says so later
        return False
    try:
        return lib.get_meta("demo") == "1"  # clipdex.demo.DEMO_META (that module imports the indexer)
    except Exception:  # noqa: BLE001
        return False
    finally:
        lib.close()


def create_app(config: dict | None = None) -> Flask:
    """The application for one library (see the module docstring for ``config``)."""
    from flask import Flask

    from clipdex.web import api, duplicates, errors, pages, security, tagedit
    from clipdex.web.state import WebState
    from clipdex.web.uploads import UploadDecoder

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES, WARM_UP=True, MODEL=None, BACKEND=None,
                      JSON_SORT_KEYS=False,
                      DEMO=False, BIND_HOST="127.0.0.1", ALLOWED_HOSTS=(), UPLOAD_DECODER={})
    app.config.update(config or {})
    if "LIBRARY" not in app.config:
        from clipdex.library import default_library_path

        app.config["LIBRARY"] = default_library_path()
    state = WebState(app.config["LIBRARY"], app.config["MODEL"], app.config["BACKEND"])  # a folder or a URL
    if not app.config["DEMO"]:  # the demo library served by its path is the demo too (as `clipdex info` says)
        app.config["DEMO"] = _marked_demo(app.config["LIBRARY"])
    app.extensions["clipdex"] = state
    app.extensions["clipdex_uploads"] = UploadDecoder(**app.config["UPLOAD_DECODER"])
    app.url_map.merge_slashes = False  # /api//health is not found (JSON 404), not redirected (HTML 308)
    app.url_map.converters["id"] = api.IdConverter
    errors.init_app(app)
    security.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(tagedit.bp)
    app.register_blueprint(duplicates.bp)
    if app.config["WARM_UP"]:
        state.warm_up()
    return app
