"""The library's SQLite schema (SQLAlchemy 2.0 style); the engine is opened by :mod:`clipdex.library.storage`.

The database is the source of truth: each picture's row holds its metadata *and* its
vector, so the FAISS index can always be rebuilt from it without re-encoding.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


#: Ids, file sizes and generations: SQLite's INTEGER is 64-bit already, PostgreSQL's is not.
Big = Integer().with_variant(BigInteger(), "postgresql")
#: Tables holding vectors keep them in the row on PostgreSQL: a 512-d vector (2 KB) is past the
#: default TOAST threshold, where each would be compressed in vain (floats) and stored aside.
INLINE = {"postgresql_with": {"toast_tuple_target": 8160}}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Meta(Base):
    """Key/value facts about the library: model, embedding size, generation counter."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class ImageRow(Base):
    """One indexed picture. ``id`` is the FAISS id and is never reused."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_hash", "content_hash"), {"sqlite_autoincrement": True, **INLINE})

    id: Mapped[int] = mapped_column(Big, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    size: Mapped[int] = mapped_column(Big)
    mtime: Mapped[float] = mapped_column(Float)
    content_hash: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    captured_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    indexed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    tags: Mapped[list[TagRow]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )

    def vector_array(self) -> np.ndarray:
        return np.frombuffer(self.vector, dtype=np.float32)


class SkippedRow(Base):
    """A file the indexer could not use, with the reason; retried when it changes."""

    __tablename__ = "skipped"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    reason: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(Big, default=-1)
    mtime: Mapped[float] = mapped_column(Float, default=-1.0)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TagPassRow(Base):
    """A tagging pass: one classifier (a label set, or a probe) run over the library.

    ``key`` identifies the pass (re-running it replaces its own tags, never another
    pass's); ``name`` is what people see and may later be chosen by them. Deleting a
    pass deletes its tags.
    """

    __tablename__ = "tag_passes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String, unique=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)  # "zero-shot" or "probe:NAME"
    labels: Mapped[str] = mapped_column(String)  # JSON list, the classifier's order
    prompts: Mapped[str | None] = mapped_column(String, nullable=True)  # JSON label -> text encoded
    templates: Mapped[str | None] = mapped_column(String, nullable=True)  # JSON list
    model_identity: Mapped[str | None] = mapped_column(String, nullable=True)
    multi_label: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TagRow(Base):
    """A label given to a picture by a tagging pass (``source`` repeats the pass's kind for readers)."""

    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_label", "label"), Index("ix_tags_pass", "pass_id"))
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String, primary_key=True)
    pass_id: Mapped[int] = mapped_column(ForeignKey("tag_passes.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String)
    probability: Mapped[float] = mapped_column(Float)
    tagged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    image: Mapped[ImageRow] = relationship(back_populates="tags")


class TagRejectionRow(Base):
    """A label a person took off a picture: no tagging pass gives the picture that label again.

    Written by ``clipdex tags remove`` (and the page's remove button); a person adding the
    label back (``tags add``) lifts it. Dropping a pass leaves it: it is the person's word.
    """

    __tablename__ = "tag_rejections"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String, primary_key=True)
    rejected_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RootRow(Base):
    """A folder (or file) given to ``clipdex index``: pictures are served only from inside these.

    ``path`` is stored as pictures' paths are (see :mod:`clipdex.library.places`): under a root
    name, ``@name/...``; otherwise the folder on ``machine``, the machine it was given on.
    """

    __tablename__ = "roots"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    added_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    machine: Mapped[str | None] = mapped_column(String, nullable=True)


class ProbeRow(Base):
    """A linear probe trained on this library's embeddings (``clipdex probe train``)."""

    __tablename__ = "probes"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    model_identity: Mapped[str] = mapped_column(String)
    classes: Mapped[str] = mapped_column(String)  # JSON list, the weight columns' order
    weights: Mapped[bytes] = mapped_column(LargeBinary)  # float32, dim x classes
    bias: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[str] = mapped_column(String)  # JSON report of the training run
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class StagedRow(Base):
    """A picture re-encoded by an unfinished ``--rebuild``, waiting to replace its row's vector.

    Filled batch by batch while the library keeps answering with its current vectors;
    ``meta.staging_model_identity`` says which model made them. When every picture has one,
    a single transaction swaps them in. ``vector`` is NULL for a file that could not be
    used: ``reason`` then says why (it is recorded as skipped), or is NULL for a file that
    is simply gone (it is removed, as any run removes deleted files).
    """

    __tablename__ = "staged_vectors"
    __table_args__ = INLINE
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    size: Mapped[int] = mapped_column(Big)
    mtime: Mapped[float] = mapped_column(Float)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    captured_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    reason: Mapped[str | None] = mapped_column(String, nullable=True)


class ChangeRow(Base):
    """One picture whose vector was added, replaced or removed by the commit that made ``generation``.

    The change log that lets a reader holding generation g catch up by applying only what
    changed since g (see :mod:`clipdex.library.changes`). ``meta.changes_from`` says from which
    generation on the log is complete; older entries are pruned once index files have moved on.
    """

    __tablename__ = "vector_changes"
    generation: Mapped[int] = mapped_column(Big, primary_key=True)
    image_id: Mapped[int] = mapped_column(Big, primary_key=True)


class HeldModelRow(Base):
    """A model whose vectors the library keeps beside the active one's (``clipdex models``).

    The active model is the one in ``meta.model_spec`` and its vectors are ``images.vector``;
    every other model the library was built with keeps its vectors in ``model_vectors`` until
    dropped, so switching back to it needs no re-encoding.
    """

    __tablename__ = "held_models"
    identity: Mapped[str] = mapped_column(String, primary_key=True)
    spec: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    kept_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ModelVectorRow(Base):
    """A held (non-active) model's vector of a picture, for the content it had (``content_hash``).

    A picture whose content has changed since no longer matches its row here: that model
    must encode it again when it is used (its row is then replaced).
    """

    __tablename__ = "model_vectors"
    __table_args__ = (Index("ix_model_vectors_image", "image_id"), INLINE)
    model_identity: Mapped[str] = mapped_column(ForeignKey("held_models.identity", ondelete="CASCADE"),
                                                primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
