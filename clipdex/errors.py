"""Exceptions the library raises; the CLI turns each into ``Error: ...`` and an exit code.

Messages say what is wrong in words that fit every front end (the web shows them too);
they never name command-line flags. The CLI adds its own hints (see ``clipdex.cli.common``).
"""

from __future__ import annotations


class ClipdexError(Exception):
    """Base class: a problem the user can act on, with a one-line message."""

    exit_code = 1


class UsageError(ClipdexError):
    """The request itself is wrong (bad option value, unknown label file, ...)."""

    exit_code = 2


class ModelUnavailable(ClipdexError):
    """The model spec is malformed or its weights cannot be loaded here."""

    exit_code = 2

    def __init__(self, message: str, fetch_failed: bool = False):
        super().__init__(message)
        self.fetch_failed = fetch_failed  # the weights could not be downloaded: front ends say how to bring them


class ModelMismatch(ClipdexError):
    """The library was built with another model than the one asked for."""

    exit_code = 2

    def __init__(self, message: str, requested: str | None = None):
        super().__init__(message)
        self.requested = requested  # the model asked for, when switching to it is an option


class LibraryError(ClipdexError):
    """The library directory is missing, empty or damaged."""

    exit_code = 1


class LibraryBusy(LibraryError):
    """Another writer holds the library (its lock file, a server's writer or commit lock, SQLite's own
    lock), or raced this one to the same pictures: trying again later may well work."""


class NoLibrary(LibraryError):
    """There is no library (or an empty one) at ``path`` yet."""

    def __init__(self, path: str, empty: bool = False):
        super().__init__(f"library at {path} is empty" if empty else f"no library at {path}")
        self.path, self.empty = path, empty


class DecodeError(ClipdexError):
    """One image file could not be decoded; the indexer records it and moves on."""
