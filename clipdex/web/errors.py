"""One JSON error shape for every API error: ``{"status": <http code>, "message": "..."}``."""

from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from clipdex.errors import ClipdexError, LibraryError, ModelMismatch, ModelUnavailable


class APIError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def status_for(exc: ClipdexError) -> int:
    """The HTTP status fitting a library exception."""
    if isinstance(exc, LibraryError):
        return 503
    if isinstance(exc, (ModelUnavailable, ModelMismatch)):
        return 500
    return 400


def error_response(status: int, message: str):
    response = jsonify({"status": status, "message": message})
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    """Answer API errors as JSON; pages keep Flask's HTML errors."""

    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(ClipdexError)
    def _library_error(exc: ClipdexError):
        return error_response(status_for(exc), str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if request.path.startswith("/api/"):
            messages = {413: f"upload too large (limit {app.config['MAX_CONTENT_LENGTH'] / 1e6:g} MB)"}
            return error_response(exc.code or 500, messages.get(exc.code, exc.description or exc.name))
        return exc
