"""The app on waitress, with the limits and error shape the app itself has.

Waitress answers some requests itself, before the app sees them: a body over
``max_request_body_size`` (refused as soon as the headers announce it, before it is read),
headers over ``max_request_header_size``, a malformed request, an unsupported transfer
coding. Its answers are plain text; here they take the API's one JSON error shape
``{"status", "message"}`` and carry the same security headers as every other answer.
"""

from __future__ import annotations

import json

import waitress
from flask import Flask
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from clipdex.web.errors import upload_limit_text
from clipdex.web.security import HEADERS

#: Request headers (request line included) above this size are refused with 431.
MAX_HEADER_BYTES = 64 * 1024


def server_error_message(code: int, detail: str, max_body: int) -> str:
    """The message for an error waitress produced (``detail`` is waitress's own text)."""
    if code == 413:
        return upload_limit_text(max_body)
    if code == 431:
        return f"request headers too large (limit {MAX_HEADER_BYTES // 1024} KB)"
    if code == 400:
        return f"malformed request: {detail}"
    if code == 501:
        return f"not supported: {detail}"
    return "internal error: the server could not answer this request"


class JSONErrorTask(ErrorTask):
    """Waitress's error answer, as JSON with the security headers."""

    def execute(self) -> None:
        error = self.request.error
        adj = self.channel.server.adj
        message = server_error_message(error.code, str(error.body), adj.max_request_body_size)
        body = json.dumps({"status": error.code, "message": message}, sort_keys=True, separators=(",", ":")).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), *HEADERS.items()])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JSONChannel(HTTPChannel):
    error_task_class = JSONErrorTask


def make_server(app: Flask, host: str, port: int, threads: int = 8, **adjustments):
    """A waitress server for ``app`` bound to ``host:port`` (call ``.run()``; port 0 picks one).

    Bodies of the app's ``MAX_CONTENT_LENGTH`` or more are refused by waitress before they
    are read (the app would refuse them too, after waitress had buffered them: behind
    waitress, werkzeug refuses a body that reaches the limit, not only one past it). Raises
    :class:`OSError` when the address cannot be used (busy, not this machine's, unknown name).
    """
    server = waitress.create_server(app, host=host, port=port, threads=threads, ident="clipdex",
                                    max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
                                    max_request_header_size=MAX_HEADER_BYTES, **adjustments)
    listeners = getattr(server, "map", None) or getattr(server, "_map", {})  # several when host has several addresses
    for listener in [server, *listeners.values()]:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = JSONChannel
    return server
