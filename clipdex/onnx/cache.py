"""Where ONNX exports live, and the key that decides when one is stale. Imports neither torch nor onnxruntime.

An export folder is ``<root>/<model-slug>-<digest>/`` where ``digest`` hashes everything the
graphs depend on: the model's identity (plus the size and mtime of every file of a model
folder), the export settings (pixel layout, precision, opset, exporter) and the versions of
torch, open_clip, onnx and onnxruntime. Change any of them and the folder name changes, so a
stale export is never used; the key is also stored in ``meta.json`` and compared on lookup.
Folders appear only complete (written under ``.tmp-*`` and renamed, see
:func:`clipdex.onnx.export.export_to_cache`). A model the ONNX path refused (its export failed
or disagreed with PyTorch) leaves ``<name>.refused.json`` with the reason, so later runs fall
back at once instead of exporting again; a change of key retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from clipdex.atomicfile import read_regular
from clipdex.userdirs import user_folder

#: Bumped whenever the export code changes what it writes, so older exports are not reused.
EXPORT_FORMAT = 4
#: Environment variable naming the cache root (tests and read-only homes point it elsewhere).
CACHE_ENV = "CLIPDEX_ONNX_CACHE"
META_FILE = "meta.json"
#: Packages whose versions are part of every key.
VERSIONED_PACKAGES = ("torch", "open_clip_torch", "onnx", "onnxruntime")


def cache_root() -> Path:
    """``$CLIPDEX_ONNX_CACHE``, else the platform's per-user cache folder + ``clipdex/onnx``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    return user_folder("cache") / "onnx"


def writable_root(root: Path) -> str | None:
    """Why exports cannot be written under ``root`` (one line), or None when they can."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or exc
        return f"cannot create the export cache {root} ({why}; CLIPDEX_ONNX_CACHE chooses another folder)"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"the export cache {root} is not writable (CLIPDEX_ONNX_CACHE chooses another folder)"
    return None


def installed_versions() -> dict[str, str]:
    """Versions of the packages the graphs depend on, read from their metadata (nothing is imported)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass(frozen=True)
class ExportSettings:
    """How the towers are exported; every field is part of the cache key.

    ``pixels``: ``uint8-nhwc`` feeds the decoders' ``N x S x S x 3`` uint8 batches as they are
    (layout change, scaling and mean/std inside the graph), ``float-nchw`` feeds float32 in
    [0, 1] already transposed. ``precision``: ``fp32``, or ``int8`` for dynamic quantisation of
    the image tower's weights (the text tower stays fp32).
    """

    pixels: str = "uint8-nhwc"
    precision: str = "fp32"
    opset: int = 17
    exporter: str = "torchscript"

    def __post_init__(self) -> None:
        if self.pixels not in ("uint8-nhwc", "float-nchw"):
            raise ValueError(f"unknown pixel layout {self.pixels!r} (uint8-nhwc or float-nchw)")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"unknown precision {self.precision!r} (fp32 or int8)")

    @property
    def min_cosine(self) -> float:
        """Per-vector agreement with PyTorch an export must reach to be used."""
        return 0.999 if self.precision == "fp32" else 0.99


def model_files_stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Name, size and mtime (ns) of every file in a model folder: new weights or config, new key."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))
    except OSError:
        return ()


@dataclass(frozen=True)
class CacheKey:
    """Everything an export depends on. ``identity`` names the model (``ModelSpec.identity``)."""

    identity: str
    settings: ExportSettings = ExportSettings()
    weights: tuple[tuple[str, int, int], ...] = ()
    versions: dict[str, str] = field(default_factory=installed_versions, hash=False)

    def as_dict(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "identity": self.identity, "settings": asdict(self.settings),
                "weights": [list(w) for w in self.weights], "versions": dict(sorted(self.versions.items()))}

    @property
    def digest(self) -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """Folder name: a readable slug of the identity, then the digest."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", self.identity).strip("-.")[-60:] or "model"
        return f"{slug}-{self.digest}"

    def folder(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / self.name

    def refusal_file(self, root: Path | None = None) -> Path:
        return (root or cache_root()) / f"{self.name}.refused.json"


def key_for_spec(spec: Any, settings: ExportSettings | None = None) -> CacheKey:
    """The key of a :class:`clipdex.models.ModelSpec`. Model folders add their files' sizes and mtimes;
    ``hf-hub:`` models the revision of the repository the Hugging Face cache holds, so an updated repo
    (which PyTorch would load) is exported again rather than answered by the old export."""
    weights: tuple = ()
    if spec.folder is not None:
        weights = model_files_stamp(spec.folder)
    elif spec.kind == "hf-hub":
        weights = (("hf-revision", hub_revision(spec.name), 0),)
    return CacheKey(spec.identity, settings or ExportSettings(), weights)


def hub_revision(repo: str) -> str:
    """The commit the local Hugging Face cache has for ``repo``'s main branch ('' when none), read from
    the cache's files without importing huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        hub = Path(os.environ["HF_HUB_CACHE"])
    else:
        hub = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    text = read_small(hub / f"models--{repo.replace('/', '--')}" / "refs" / "main", 256)
    return (text or "").strip()


def read_small(path: Path, limit: int = 1 << 20) -> str | None:
    """The text of a regular file of at most ``limit`` bytes, else None. Opened without blocking, so a
    FIFO or device planted under the name (a shared cache) is refused, not waited on."""
    data = read_regular(path, limit)
    try:
        return data.decode("utf-8") if data is not None else None
    except UnicodeDecodeError:
        return None


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The folder's ``meta.json`` (a JSON object), or None when it is missing, unreadable or not one."""
    text = read_small(folder / META_FILE)
    try:
        meta = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def find(key: CacheKey, root: Path | None = None) -> Path | None:
    """The export folder for ``key`` if a complete one exists whose stored key matches, else None.

    Every file ``meta.json`` lists must be there, a plain file of the recorded size, and named
    plainly (no path): a truncated, deleted or swapped file makes the export missing, so it is
    made again, instead of failing every command until someone deletes the folder.
    """
    folder = key.folder(root)
    meta = read_meta(folder)
    if meta is None or meta.get("key") != key.as_dict() or not isinstance(meta.get("files"), dict):
        return None
    try:
        used = {meta["image"]["file"], meta["text"]["file"], meta["tokenizer"]["file"]}
        used |= {meta["text"]["token_table"]} if meta["text"].get("cut") else set()
        numbers = (meta["dim"], meta["image"]["size"], meta["text"]["context_length"])
    except (KeyError, TypeError, AttributeError):
        return None
    if not all(isinstance(n, int) and 0 < n < 1 << 16 for n in numbers):
        return None
    if not used <= set(meta["files"]):
        return None
    for name, size in meta["files"].items():
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
            return None
        try:
            info = (folder / name).lstat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return None
    return folder


def file_sizes(folder: Path, leave_out: tuple[str, ...]) -> dict[str, int]:
    """Name -> size of the files of an export folder, for ``meta.json`` (see :func:`find`)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name not in leave_out}


def refusal(key: CacheKey, root: Path | None = None) -> str | None:
    """The reason recorded when ``key`` was refused, or None."""
    text = read_small(key.refusal_file(root))
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("key") != key.as_dict() or not isinstance(data.get("reason"), str):
        return None
    return f"{data['reason'][:300]} (remembered in {key.refusal_file(root)}: delete it to try again)"


def record_refusal(key: CacheKey, reason: str, root: Path | None = None) -> None:
    """Remember that ``key`` was refused and why (written to a temporary file, then renamed)."""
    path = key.refusal_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key.as_dict(), "reason": reason}, indent=1))
    os.replace(tmp, path)
