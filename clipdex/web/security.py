"""Who may talk to the server, and the headers every answer carries.

The server holds someone's private pictures on their own machine, so it defends against
the two ways a web page elsewhere can reach a local server:

* DNS rebinding: an outside name that resolves to 127.0.0.1 makes the browser treat the
  server as that name's origin. Requests must therefore be addressed (``Host``) to a name
  the server was started on: its bind address, the loopback names when it listens on
  loopback, any IP address when it listens on all interfaces (a rebinding attack always
  uses a name), and the names allowed explicitly.
* Cross-site requests: a state-changing request (anything but GET, HEAD, OPTIONS) must come
  from the server's own origin (``Origin``, ``Sec-Fetch-Site``), and so must every request
  to the API: a page elsewhere could otherwise make the server decode pictures (``<img
  src=.../preview>``) or probe the library. Browsers always send ``Sec-Fetch-Site``; any
  value but ``same-origin`` or ``none`` (typed or bookmarked) is cross-site. The page itself
  may be opened from a link anywhere.

Every answer, errors included, carries a strict Content-Security-Policy and ``nosniff``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from flask import Flask, Response, request

from clipdex.web.errors import APIError

#: The page loads its own script and stylesheet only; pictures may also be blob:/data:
#: URLs (a dropped picture's preview). No inline script or style, no plugins, no framing.
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The ``Sec-Fetch-Site`` values of requests made by the server's own page or by the user.
OWN_SITES = frozenset({"same-origin", "none"})


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _normal(name: str) -> str:
    """A host name as compared: lower case, no trailing dot, IPv6 without brackets."""
    return name.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


class HostPolicy:
    """The ``Host`` names a server bound to ``bind_host`` answers to.

    Loopback (127.0.0.0/8, ::1, localhost): the loopback names and the bind address.
    All interfaces (0.0.0.0, ::): any IP address, the loopback names and this machine's
    name. A particular address or name: that one. Plus ``extra`` names in every case.
    """

    def __init__(self, bind_host: str = "127.0.0.1", extra: Iterable[str] = ()):
        bind = _normal(bind_host or "0.0.0.0")
        ip = _ip(bind)
        self.any_ip = ip is not None and ip.is_unspecified
        names = {bind, *(_normal(e) for e in extra if e.strip())}
        if (ip is not None and ip.is_loopback) or bind == "localhost" or self.any_ip:
            names.update(LOOPBACK_NAMES)
        if self.any_ip:
            names.add(_normal(socket.gethostname()))
        names.discard("0.0.0.0")
        names.discard("::")
        self.names = frozenset(names)

    def allows(self, host_header: str) -> bool:
        """True when a request with this ``Host`` header is addressed to this server."""
        name = split_host(host_header)
        if name is None:
            return False
        if name in self.names:
            return True
        return self.any_ip and _ip(name) is not None

    def describe(self) -> str:
        shown = sorted(f"[{n}]" if ":" in n else n for n in self.names)
        return ", ".join(shown + (["any IP address"] if self.any_ip else []))


def split_host(host_header: str) -> str | None:
    """The name part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), or None if malformed."""
    host = host_header.strip()
    if not host:
        return None
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1:] and not (host[end + 1] == ":" and host[end + 2:].isdigit())):
            return None
        return _normal(host[1:end])
    name, sep, port = host.rpartition(":")
    if not sep:
        name = host
    elif not port.isdigit() or ":" in name:
        return None
    return _normal(name) or None


def same_origin(origin: str) -> bool:
    """True when ``origin`` (an Origin header) is the origin this request was sent to."""
    return origin == f"{request.scheme}://{request.host}"


def check_request(policy: HostPolicy) -> None:
    """Refuse requests not addressed to this server (400) and cross-site writes (403)."""
    host = request.headers.get("Host", "")
    if not policy.allows(host):
        shown = host[:100] if host else "none"
        raise APIError(400, f"this server answers only to {policy.describe()} (the request was addressed to "
                            f"{shown!r}); other names must be allowed when the server starts")
    sites = request.headers.getlist("Sec-Fetch-Site")
    cross = bool(sites) and (len(sites) > 1 or sites[0].strip().lower() not in OWN_SITES)
    if cross and (request.path == "/api" or request.path.startswith("/api/")):
        raise APIError(403, f"cross-site {request.method} refused ({request.path[:100]})")
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin):
        raise APIError(403, f"cross-origin {request.method} refused (from {origin[:100]!r})")
    if cross:
        raise APIError(403, f"cross-site {request.method} refused")


def add_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Check every request's Host and Origin; add the security headers to every answer."""
    policy = HostPolicy(app.config["BIND_HOST"], app.config["ALLOWED_HOSTS"])
    app.extensions["clipdex_hosts"] = policy
    app.before_request(lambda: check_request(policy))
    app.after_request(add_headers)
