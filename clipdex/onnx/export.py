"""Export an open_clip model's two towers to ONNX, verify them against PyTorch, cache them atomically.

The only part of the ONNX path that needs torch. The image graph takes the decoders' uint8
``N x S x S x 3`` batches (or float NCHW, see :class:`ExportSettings`) and does the layout
change, scaling, mean/std and the final L2 normalisation itself; the text graph takes CLIP
token ids and ends in the L2 normalisation too. Before an export is accepted, both graphs run
in onnxruntime on probe batches of another size than the one traced (so the batch axis is
really dynamic) and every vector must match PyTorch's (cosine >= 0.999 for fp32); the
tokenizer port must give open_clip's tokens exactly. Otherwise the model is refused for the
ONNX path with the reason, and the refusal is remembered for that cache key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipdex.onnx import BackendUnavailable
from clipdex.onnx.cache import (
    META_FILE,
    CacheKey,
    ExportSettings,
    cache_root,
    file_sizes,
    find,
    read_small,
    record_refusal,
    refusal,
)
from clipdex.onnx.runtime import TOKEN_TABLE, OnnxEncoder
from clipdex.onnx.tokenizer import MERGES_FILENAME, ClipTokenizer, default_bpe_path, write_merges

#: Texts the towers are compared on (a mix of lengths, scripts and punctuation; one past 77 tokens).
PROBE_TEXTS = [
    "a photo of a dog", "A RED CIRCLE on a blue background!", "", "naïve café – 東京の夜景 🌃",
    "don't stop: 3 cats & 2 dogs", "x", "a " + "very " * 90 + "long caption", "Ünïcödé ß ﬁ “quotes” &amp; <b>",
]
#: Texts the tokenizer port is compared on, token for token, before the towers.
TOKEN_PROBES = PROBE_TEXTS + [
    "  spaces\tand\nnewlines  ", "UPPER lower MiXeD", "it's we're they'll I'd you've I'M", "2023-05-17 12:30",
    "e\u0301 vs é", "ＡＢＣ full width", "Ελληνικά και Русский", "مرحبا بالعالم", "emoji 👍🏽👨‍👩‍👧",
    "&lt;tag&gt; &#39;", "CafÃ© mojibake", "!!!???...,,,", "hello_world snake_case", "\x00control\x07chars\x1b[31m",
]


def tokenizer_config(tokenizer: Any, label: str) -> dict[str, Any]:
    """What the runtime needs to rebuild ``tokenizer`` (an open_clip tokenizer) without open_clip,
    or a refusal for tokenizers the port does not cover."""
    from open_clip.tokenizer import SimpleTokenizer

    if not isinstance(tokenizer, SimpleTokenizer):
        raise BackendUnavailable(label, f"its tokenizer is {type(tokenizer).__name__}, not CLIP's BPE tokenizer, "
                                        "and the ONNX path runs only CLIP's BPE tokenizer")
    if tokenizer.reduction_fn is not None:
        raise BackendUnavailable(label, "its tokenizer shortens long texts by dropping tokens, "
                                        "which the ONNX path does not do")
    cleans = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}
    clean = cleans.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise BackendUnavailable(label, "its tokenizer cleans text in a way the ONNX path does not know")
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    return {"kind": "clip-bpe", "file": MERGES_FILENAME, "context_length": int(tokenizer.context_length),
            "clean": clean, "additional_special_tokens": specials[2:]}


def _probe_pixels(n: int, size: int) -> np.ndarray:
    """``n`` deterministic pictures: noise, a smooth gradient, flat colours, then more noise."""
    rng = np.random.default_rng(8)
    out = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    if n > 1:
        out[1] = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                           np.full((size, size), 128, np.float32)], axis=-1).astype(np.uint8)
    if n > 2:
        out[2] = (200, 40, 30)
    return out


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """torch's TorchScript exporter dumps its whole graph on stderr when it fails (its log switch is
    stuck on); the failure is reported in one line instead. Redirects file descriptor 2 briefly."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _quantize_int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it warns on the root logger about the uint8 input it leaves alone
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _weights_beside(path: Path) -> None:
    """Rewrite an ONNX file with its weights in ``<name>.data`` beside it. onnxruntime then maps the
    weights instead of parsing them out of the graph: a session starts 2-4 times sooner (measured on
    ViT-B-32's text tower: 0.26 s instead of 0.40 s, 0.07 s without pre-packing)."""
    import onnx

    model = onnx.load(str(path))
    tmp = path.with_name(f"{path.name}.tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    os.replace(tmp, path)


def export_towers(model: Any, tokenizer: Any, preprocess: dict[str, Any], folder: Path, label: str,
                  settings: ExportSettings | None = None, probe_images: int = 3) -> dict[str, Any]:
    """Write ``image.onnx``, ``text.onnx`` and the BPE merges file into ``folder`` and verify them.

    ``model`` is an open_clip model on the CPU in float32, ``tokenizer`` its open_clip tokenizer,
    ``preprocess`` its preprocessing config (``size``, ``mean``, ``std``, ``resize_mode``).
    Returns the metadata for ``meta.json`` (without the key); raises :class:`BackendUnavailable`.
    """
    import torch

    settings = settings or ExportSettings()
    started = time.perf_counter()
    tok_cfg = tokenizer_config(tokenizer, label)
    size = preprocess["size"]
    size = int(size if isinstance(size, int) else size[0])
    mean, std = [float(v) for v in preprocess["mean"]], [float(v) for v in preprocess["std"]]
    write_merges(default_bpe_path(), folder / MERGES_FILENAME)
    port = ClipTokenizer(folder / MERGES_FILENAME, tok_cfg["context_length"], tok_cfg["clean"],
                         tok_cfg["additional_special_tokens"])
    if port.encoder != tokenizer.encoder:
        raise BackendUnavailable(label, "its tokenizer's vocabulary is not the one of open_clip's merges file")
    for text in TOKEN_PROBES:
        if not np.array_equal(port([text]), tokenizer([text]).numpy()):
            raise BackendUnavailable(label, f"the tokenizer port gives other tokens than open_clip for {text!r}")

    from clipdex.onnx.towers import fast_attention_off, image_tower, text_tower

    image, (text, cut) = image_tower(model, mean, std, settings.pixels), text_tower(model)
    pixels = _probe_pixels(max(2, probe_images), size)
    feed = pixels if settings.pixels == "uint8-nhwc" else pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255
    tokens = port(PROBE_TEXTS)
    image_file = "image.onnx"
    traced = folder / (image_file if settings.precision == "fp32" else "image.fp32.onnx")
    with torch.no_grad(), warnings.catch_warnings(), fast_attention_off(), _stderr_silenced():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(image, (torch.from_numpy(feed[:1]),), str(traced), dynamo=False,
                              input_names=["pixels"], output_names=["embedding"], opset_version=settings.opset,
                              dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}})
            if cut:
                table = model.token_embedding.weight.detach().float()
                np.save(folder / TOKEN_TABLE, table.numpy())
                example = (table[torch.from_numpy(tokens[:1])], torch.from_numpy(tokens[:1].argmax(axis=1)))
                inputs, axes = ["embedded", "eot"], {"embedded": {0: "batch", 1: "length"}, "eot": {0: "batch"}}
            else:
                example, inputs, axes = (torch.from_numpy(tokens[:1]),), ["tokens"], {"tokens": {0: "batch"}}
            torch.onnx.export(text, example, str(folder / "text.onnx"), dynamo=False, input_names=inputs,
                              output_names=["embedding"], opset_version=settings.opset,
                              dynamic_axes={**axes, "embedding": {0: "batch"}})
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any exporter failure refuses this model, in one line
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            transient = isinstance(exc, ImportError) or "out of memory" in first.lower()  # this machine, now
            raise BackendUnavailable(label, f"export to ONNX failed ({type(exc).__name__}: {first})",
                                     transient=transient) from None
    if settings.precision == "int8":
        _quantize_int8(traced, folder / image_file)
        traced.unlink()
    for graph in (folder / image_file, folder / "text.onnx"):
        _weights_beside(graph)
    # what clipdex.models.Encoder computes: open_clip's own tokens, normalisation outside the model
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
            / torch.tensor(std).view(1, 3, 1, 1)
        want_image = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).numpy()
        want_text = torch.nn.functional.normalize(model.encode_text(tokenizer(PROBE_TEXTS)).float(), dim=-1).numpy()

    meta = {
        "identity": label,
        "image": {"file": image_file, "inputs": ["pixels"], "layout": settings.pixels, "size": size,
                  "resize_mode": preprocess.get("resize_mode", "shortest"),
                  "interpolation": preprocess.get("interpolation", "bicubic"),
                  "mean": mean, "std": std, "normalised_in_graph": True, "precision": settings.precision},
        "text": {"file": "text.onnx", "context_length": tok_cfg["context_length"], "cut": cut,
                 **({"inputs": ["embedded", "eot"], "token_table": TOKEN_TABLE} if cut else {"inputs": ["tokens"]})},
        "tokenizer": tok_cfg,
        "dim": int(want_text.shape[1]),
        "logit_scale": float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 100.0,
    }
    # verified through the runtime's own code path: batches of another size than traced, texts one by one
    # (cut to their own length) and together
    (folder / META_FILE).write_text(json.dumps(meta))
    runtime = OnnxEncoder(folder)
    try:
        image_cos = _min_cosine(runtime.encode_pixels(pixels), want_image)
        text_cos = min(_min_cosine(runtime.encode_tokens(tokens), want_text),
                       *(_min_cosine(runtime.encode_tokens(tokens[i:i + 1]), want_text[i:i + 1])
                         for i in range(len(tokens))))
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base class
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise BackendUnavailable(label, f"ONNX Runtime cannot run the exported graphs ({first})") from None
    for tower, cos in (("image", image_cos), ("text", text_cos)):
        if not cos >= settings.min_cosine:  # NaN fails too
            raise BackendUnavailable(label, f"its {tower} vectors from ONNX Runtime differ from PyTorch's "
                                            f"(lowest cosine {cos:.4f}, needs {settings.min_cosine})")
    return {**meta, "verified": {"image_min_cosine": image_cos, "text_min_cosine": text_cos,
                                 "probe_images": len(pixels), "probe_texts": len(PROBE_TEXTS),
                                 "token_probes": len(TOKEN_PROBES)},
            "export_seconds": round(time.perf_counter() - started, 2)}


#: Inside a temporary export folder: the host and pid of the exporting process.
OWNER_FILE = ".owner"

Loader = Callable[[], tuple[Any, Any, dict[str, Any]]]


def export_to_cache(key: CacheKey, load: Loader, root: Path | None = None, probe_images: int = 3,
                    retry_refused: bool = False) -> Path:
    """The export folder for ``key``, exporting with ``load()`` -> (model, tokenizer, preprocess cfg) when
    it is not cached yet. Written in a temporary folder and renamed into place, so the cache never
    holds a partial export. A refusal is recorded (see :func:`clipdex.onnx.cache.refusal`) and raised,
    and raised again at once on later calls unless ``retry_refused``."""
    root = root or cache_root()
    found = _cached(key, root, retry_refused)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with _export_lock(root / f".{key.name}.lock"):  # one export of a model at a time: the others wait for it
        return _cached(key, root, retry_refused) or _export_locked(key, load, root, probe_images)


def _cached(key: CacheKey, root: Path, retry_refused: bool) -> Path | None:
    """The complete export of ``key``, None when there is none; raises a remembered refusal."""
    found = find(key, root)
    if found is not None:
        return found
    reason = None if retry_refused else refusal(key, root)
    if reason:
        raise BackendUnavailable(key.identity, reason)
    return None


@contextlib.contextmanager
def _export_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (released when the process dies, so a killed export blocks nobody)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent exports each finish and one rename wins
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _export_locked(key: CacheKey, load: Loader, root: Path, probe_images: int) -> Path:
    _remove_abandoned(root)
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}-{key.name}"
    tmp.mkdir()
    (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
    try:
        model, tokenizer, preprocess = load()
        try:
            meta = export_towers(model, tokenizer, preprocess, tmp, key.identity, key.settings, probe_images)
        except BackendUnavailable as exc:
            if not exc.transient:
                record_refusal(key, exc.reason, root)
            raise
        for f in tmp.iterdir():  # onnx writes weights files 0600: readable as the rest, for a shared cache
            if f.name != OWNER_FILE:
                f.chmod(0o666 & ~_umask())
        meta = {"key": key.as_dict(), **meta, "files": file_sizes(tmp, (META_FILE, OWNER_FILE))}
        _write_durably(tmp / META_FILE, json.dumps(meta, indent=1).encode())
        (tmp / OWNER_FILE).unlink()
        for f in tmp.iterdir():
            if f.name != META_FILE:
                _fsync(f)
        final = key.folder(root)
        if final.exists() and find(key, root) is None:  # a damaged folder under our name: move it away
            shutil.rmtree(_rename_aside(final), ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if find(key, root) is None:  # not another process's complete export: a real failure
                raise
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def torch_parts(spec: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The float32 CPU open_clip model of ``spec``, its tokenizer and preprocessing config, shared with
    the process's other PyTorch encoders of that model."""
    from clipdex.torchclip import TorchEncoder

    return TorchEncoder(spec, device="cpu", precision="fp32").torch_parts()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_aside(folder: Path) -> Path:
    aside = folder.with_name(f".tmp-stale-{folder.name}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, aside)
    return aside


def _remove_abandoned(root: Path) -> None:
    """Delete temporary folders of exports killed midway: their process (on this host) is gone, or
    they are a day old and say nothing of their owner."""
    host = socket.gethostname()
    for tmp in root.glob(".tmp-*"):
        if not tmp.is_dir():
            continue
        try:
            owner_host, pid = (read_small(tmp / OWNER_FILE, 4096) or "").split()
        except ValueError:
            try:
                if time.time() - tmp.stat().st_mtime > 86400:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass
            continue
        if owner_host != host or not pid.isdigit() or os.name != "posix":  # signal 0 ends a process on Windows
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
