"""What the server keeps between requests: the library and the model, loaded once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from clipdex.errors import ClipdexError, LibraryError
from clipdex.library import Library
from clipdex.models import Encoder, Say


class WebState:
    """Opens the library on first need, and again on every request until it can.

    The server starts without a library (or with a damaged one), answers 503 with the
    reason, and serves the library as soon as it can be opened, without a restart. The
    model is loaded once (again if a rebuild switches models); the FAISS index follows the
    library's generation, so pictures added by a concurrent ``clipdex index`` appear once
    that run commits.
    """

    def __init__(self, library_path: Path | str, model: str | None = None, backend: str | None = None):
        from clipdex.library.dialect import is_url, shown

        self.library_path = shown(library_path) if is_url(library_path) else Path(library_path)
        self._where = library_path if is_url(library_path) else self.library_path
        self.model, self.backend = model, backend
        self._lib: Library | None = None
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()

    def library(self) -> Library:
        """The open library; :class:`LibraryError` (with the reason) while there is none."""
        with self._lock:
            if self._lib is None:
                self._lib = self._open()
            return self._lib

    def _open(self) -> Library:
        try:
            return Library.open(self._where)
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            reason = getattr(exc, "orig", None) or getattr(exc, "strerror", None) or exc
            raise LibraryError(f"library at {self.library_path} cannot be opened: {reason}") from None

    def encoder(self, say: Say | None = None) -> Encoder:
        """The library's model, loaded once, and again after ``index --rebuild`` switches models.

        Queries must be encoded by the model that made the stored vectors: the library's
        binding is read on every call (one small query), and a switch loads the new model.
        """
        lib = self.library()
        with self._lock:
            stored = lib.model_spec
            if self._encoder is not None and stored is not None and self._encoder.spec.identity != stored.identity:
                self._encoder = None  # a rebuild switched the library to another model
            if self._encoder is None:
                self._encoder = lib.encoder_for(self.model, backend=self.backend).load(say)
            return self._encoder

    @property
    def loaded_backend(self) -> str | None:
        """What runs the loaded model (``onnx`` or ``torch``), None before it loads."""
        encoder = self._encoder
        return encoder.backend if encoder is not None and encoder.is_loaded else None

    def warm_up(self, say: Say | None = None, image: bool = True) -> ClipdexError | None:
        """Load the model and index now, if there is a library yet; the problem if not. ``say`` hears
        one-line progress and a backend note. ``image=False`` leaves the image tower (searches by an
        uploaded picture) to :meth:`warm_up_image`, which a server runs once it answers."""
        try:
            encoder = self.encoder(say)
            encoder.warm_up(image=image)
            if encoder.note and say is not None:
                say(f"note: {encoder.note}")
            self.library().index()
        except ClipdexError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a damaged library must not stop the server starting
            return LibraryError(f"library at {self.library_path} cannot be used: {exc}")
        return None

    def warm_up_image(self) -> None:
        """Load the image tower now (in the background of a server that already answers text searches)."""
        try:
            self.encoder().warm_up(text=False)
        except Exception:  # noqa: BLE001 - any problem is reported by the request that needs the tower
            pass
