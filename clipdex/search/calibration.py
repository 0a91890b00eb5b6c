"""Calibrated relevance: a 0..1 score a person can read, the same cut-off for every query and model.

A raw cosine means little on its own: one model puts matching pictures at 0.3, another at
0.7, and a query's best picture scores high even when it does not show the query at all.
So each picture is compared with *itself*: its score for the query is set against its
scores for a fixed background vocabulary of generic concepts (people, animals, places,
objects, colours, shapes), encoded once per model and kept in the library
(:mod:`clipdex.library.calibration`). The query's standing among them,

    z = (score(query) - mean(score(background))) / std(score(background)),

counts how many of the picture's own standard deviations the query stands above an average
concept for that picture. It does not depend on the model's cosine range, nor on how
strongly the query happens to score in general, and a second true description (the
background's "a circle" for a red circle) only nudges the mean instead of competing with
the query as it would in a softmax. ``relevance = 1 / (1 + exp(-SLOPE * (z - Z_CUT)))``, and
a picture *matches* when its relevance is at least :data:`MATCH` (0.5, i.e. ``z >= Z_CUT``).
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from clipdex.library import Library
from clipdex.library import calibration as stored
from clipdex.models import Encoder

#: Where relevance is one half: the query stands one standard deviation above the picture's average concept.
Z_CUT = 1.0
#: How quickly relevance rises past the cut-off (z = Z_CUT + 1 reads 0.95).
SLOPE = 3.0
#: The relevance a picture needs to count as a match.
MATCH = 0.5

_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey",
            "gold", "silver")
_THINGS = (
    "person", "man", "woman", "child", "baby", "face", "crowd", "dog", "cat", "bird", "horse", "cow", "sheep",
    "fish", "insect", "flower", "tree", "grass", "forest", "mountain", "beach", "sea", "lake", "river", "sky",
    "cloud", "sunset", "snow", "rain", "desert", "city", "street", "building", "house", "room", "kitchen",
    "bedroom", "car", "bus", "bicycle", "train", "boat", "airplane", "road", "bridge", "food", "cake", "fruit",
    "bread", "drink", "cup", "bottle", "table", "chair", "bed", "book", "computer", "phone", "screen", "toy",
    "ball", "circle", "square", "triangle", "star", "heart", "line", "pattern", "text", "document", "logo",
    "drawing", "painting", "map",
)
#: Generic concepts a picture is compared with; changing it changes :data:`VOCABULARY_ID`, and stored
#: background vectors of the old vocabulary are then encoded again.
BACKGROUND: tuple[str, ...] = (
    *(f"a photo of a {thing}." for thing in _THINGS),
    *(f"something {colour}" for colour in _COLOURS),
    "a photo.", "an image.", "a blurry photo.", "a dark photo.", "a bright photo.", "a close-up photo.",
    "a picture of something",
)
VOCABULARY_ID = hashlib.sha256("\n".join(("v1", *BACKGROUND)).encode()).hexdigest()[:16]

_memory: dict[str, np.ndarray] = {}  # model identity -> background vectors, for this process
_lock = threading.Lock()


def background_for(lib: Library, encoder: Encoder) -> np.ndarray:
    """The background vocabulary's unit vectors for ``encoder``'s model (``len(BACKGROUND) x dim``).

    Read from the library when it holds them for this model and vocabulary; otherwise encoded
    (or taken from this process's memory) and stored there for next time, when it can be written.
    """
    identity = encoder.spec.identity
    value = stored.load(lib, identity)
    if value is not None and value.get("vocabulary") == VOCABULARY_ID:
        matrix = stored.unpack_matrix(value.get("background") or {})
        if matrix is not None and matrix.shape == (len(BACKGROUND), encoder.dim):
            return matrix
    with _lock:
        matrix = _memory.get(identity)
    if matrix is None:
        # rounded as stored, so the first search and later ones give the same relevance
        matrix = np.asarray(encoder.encode_texts(list(BACKGROUND)), np.float16).astype(np.float32)
        with _lock:
            _memory[identity] = matrix
    stored.store(lib, identity, {"vocabulary": VOCABULARY_ID, "prompts": len(BACKGROUND),
                                 "background": stored.pack_matrix(matrix)})
    return matrix


def standing(vectors: np.ndarray, query: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Each picture's z: how far its score for ``query`` stands above its scores for the background."""
    vectors = np.asarray(vectors, np.float32).reshape(-1, background.shape[1])
    own = vectors @ np.asarray(query, np.float32)
    against = vectors @ background.T
    spread = np.maximum(against.std(axis=1), 1e-6)
    return (own - against.mean(axis=1)) / spread


def relevance(vectors: np.ndarray, query: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Calibrated relevance in 0..1 of each picture (rows of ``vectors``) for a unit text query."""
    z = standing(vectors, query, background)
    return 1.0 / (1.0 + np.exp(-SLOPE * (z - Z_CUT)))
