"""Exceptions the library raises; the CLI turns each into ``Error: ...`` and an exit code."""

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


class ModelMismatch(ClipdexError):
    """The library was built with another model than the one asked for."""

    exit_code = 2


class LibraryError(ClipdexError):
    """The library directory is missing, empty or damaged."""

    exit_code = 1


class DecodeError(ClipdexError):
    """One image file could not be decoded; the indexer records it and moves on."""
