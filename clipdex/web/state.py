"""What the server keeps between requests: the library and the model, loaded once."""

from __future__ import annotations

import threading
from pathlib import Path

from clipdex.errors import LibraryError
from clipdex.library import Library
from clipdex.models import Encoder


class WebState:
    """Opens the library on first need (it may not exist yet when the server starts).

    The model is loaded once; the FAISS index follows the library's generation, so
    pictures added by a concurrent ``clipdex index`` appear once that run commits.
    """

    def __init__(self, library_path: Path, model: str | None = None):
        self.library_path = Path(library_path)
        self.model = model
        self._lib: Library | None = None
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()

    def library(self) -> Library:
        """The open library; :class:`LibraryError` while there is none."""
        with self._lock:
            if self._lib is None:
                self._lib = Library.open(self.library_path)
            return self._lib

    def encoder(self) -> Encoder:
        lib = self.library()
        with self._lock:
            if self._encoder is None:
                self._encoder = lib.encoder_for(self.model).load()
            return self._encoder

    def warm_up(self) -> None:
        """Load the model and index at start-up, if there is a library yet."""
        try:
            self.encoder()
            self.library().index()
        except LibraryError:
            pass
