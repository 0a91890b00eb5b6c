"""One JSON error shape for every error the server answers: ``{"status": <http code>, "message": "..."}``.

Flask's own errors (unknown route, wrong method, body too large) take the same shape as
the API's, everywhere: the page never shows an error document of its own, and errors
waitress produces before Flask sees the request are shaped alike (``clipdex.web.server``).
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from clipdex.errors import ClipdexError, LibraryError, ModelMismatch, ModelUnavailable, NoLibrary


class APIError(Exception):
    """An error answered as JSON with an HTTP status (and optional extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def status_for(exc: ClipdexError) -> int:
    """The HTTP status fitting a library exception: the server cannot serve yet (503), or bad input (400)."""
    from clipdex.onnx import BackendUnavailable

    if isinstance(exc, (LibraryError, ModelUnavailable, ModelMismatch, BackendUnavailable)):
        return 503
    return 400


def message_for(exc: ClipdexError) -> str:
    """The library's message, with what to do in words where the web can say more (never CLI flags)."""
    if isinstance(exc, NoLibrary):
        if exc.empty:
            return f"{exc}: no pictures are indexed there yet; this server shows them as soon as they are"
        return f"{exc} yet: index a folder of pictures into it; this server picks it up without a restart"
    return str(exc)


def upload_limit_text(limit: int | None) -> str:
    return f"upload too large (limit {(limit or 0) / 1e6:g} MB)"


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    response = jsonify({"status": status, "message": message})
    response.status_code = status
    response.headers.update(headers or {})
    return response


def init_app(app: Flask) -> None:
    """Answer every error as JSON, and OPTIONS with an empty 204 saying which methods are allowed."""

    @app.after_request
    def _options(response):
        if request.method == "OPTIONS" and response.status_code == 200:  # Flask's automatic answer
            response.status_code = 204
            response.set_data(b"")
            response.headers.pop("Content-Type", None)
            response.headers.pop("Content-Length", None)
        return response

    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(ClipdexError)
    def _library_error(exc: ClipdexError):
        return error_response(status_for(exc), message_for(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = exc.code or 500
        headers = {}
        if code == 404:
            message = f"nothing here: {request.path[:200]}"
        elif code == 405 and isinstance(exc, MethodNotAllowed):
            allowed = sorted(exc.valid_methods or [])
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method[:20]} is not allowed here (allowed: {', '.join(allowed)})"
        elif code == 413:
            message = upload_limit_text(app.config["MAX_CONTENT_LENGTH"])
        elif code >= 500:
            message = "internal error: the server could not answer this request"
        else:
            message = exc.description or exc.name
        return error_response(code, message, headers)
