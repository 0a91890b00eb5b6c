"""Choosing what runs the model (#8): ONNX Runtime by default on the CPU, PyTorch when asked for or when
the model's export is refused; the query path never imports torch; vectors of both backends mix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clipdex.library import Library
from clipdex.models import TINY_MODEL, Encoder, parse_model_spec, tiny_model_dir
from clipdex.onnx import BackendUnavailable
from clipdex.onnx.cache import cache_root, find, key_for_spec, refusal
from clipdex.onnx.export import export_to_cache
from clipdex.synthetic import write_collection
from tests.conftest import invoke
from tests.test_onnx import _Perturbed, _tiny_parts

#: Run in a fresh interpreter: a clipdex command, then the heavy modules it imported.
_NO_TORCH = """
import sys
from clipdex.cli import main
try:
    main({args!r})
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("HEAVY", sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'open_clip', 'torchvision'}}))
"""


def _heavy_modules(*args: str) -> str:
    out = subprocess.run([sys.executable, "-c", _NO_TORCH.format(args=list(args))], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_session_library_was_encoded_by_onnx_runtime(library):
    """The default (auto) on a CPU: the tiny model exported once, verified, then used without torch."""
    folder = find(key_for_spec(parse_model_spec(TINY_MODEL)))
    assert folder is not None and folder.parent == cache_root()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["verified"]["image_min_cosine"] >= 0.999 and meta["verified"]["text_min_cosine"] >= 0.999
    assert Encoder(TINY_MODEL).backend == "onnx"
    assert Encoder(TINY_MODEL, backend="torch").backend == "torch"


def test_search_image_search_and_small_indexing_never_import_torch(library, collection, copied, tmp_path):
    lib = str(library.path)
    assert _heavy_modules("search", "a red circle", "--library", lib, "-k", "3") == "HEAVY []"
    picture = next(iter(collection))
    assert _heavy_modules("search", "--image", str(picture), "--library", lib, "-k", "3") == "HEAVY []"
    new = write_collection(tmp_path / "new", per_class=1, seed=9)
    assert len(new) == 24
    assert _heavy_modules("index", str(tmp_path / "new"), "--library", str(copied)) == "HEAVY []"
    assert _heavy_modules("tag", "--labels", "circle,square", "--library", str(copied)) == "HEAVY []"


def test_both_backends_find_the_same_pictures(library):
    by = {}
    for backend in ("onnx", "torch"):
        out = invoke("search", "a red circle", "--library", str(library.path), "-k", "10", "--json",
                     "--backend", backend)
        assert out.exit_code == 0, out.stderr
        by[backend] = [(r["path"], r["score"]) for r in json.loads(out.stdout)["results"]]
    assert [p for p, _ in by["onnx"][:5]] == [p for p, _ in by["torch"][:5]]
    assert np.allclose([s for _, s in by["onnx"]], [s for _, s in by["torch"]], atol=2e-3)


def test_pictures_indexed_with_either_backend_mix_in_one_library(tmp_path):
    pictures = write_collection(tmp_path / "pics", per_class=2, seed=5)
    folders = sorted({p.parent for p in pictures})
    half = len(folders) // 2
    lib_path = tmp_path / "lib"
    for backend, part in (("torch", folders[:half]), ("onnx", folders[half:])):
        out = invoke("index", *map(str, part), "--library", str(lib_path), "--model", TINY_MODEL, "--backend",
                     backend, "--json")
        assert out.exit_code == 0, out.stderr
        assert json.loads(out.stdout)["backend"] == backend
    lib = Library.open(lib_path)
    ids, vectors = lib.load_vectors()
    assert len(ids) == len(pictures)
    # a picture's own vector from the other backend finds itself first
    onnx = Encoder(TINY_MODEL, backend="onnx")
    from clipdex.imaging import load_for_model
    from clipdex.search import search

    for path in (sorted(folders[0].iterdir())[0], sorted(folders[-1].iterdir())[0]):
        pixels = load_for_model(path, onnx.image_size, onnx.resize_mode)[0][None]
        hits = search(lib, onnx.encode_pixels(pixels)[0], 1)
        assert hits[0].path == str(path) and hits[0].score > 0.999


@pytest.fixture
def refused_model(tmp_path) -> str:
    """A copy of the tiny model whose ONNX export really was refused: the graph exported from it computes
    other vectors than PyTorch (see ``_Perturbed``), so verification failed and was recorded."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), folder)
    spec = parse_model_spec(f"local-dir:{folder}")
    with pytest.raises(BackendUnavailable):
        export_to_cache(key_for_spec(spec), lambda: _tiny_parts(_Perturbed))
    assert refusal(key_for_spec(spec)) is not None
    return f"local-dir:{folder}"


def test_a_refused_model_falls_back_to_pytorch_with_a_note(tmp_path, refused_model):
    pictures = write_collection(tmp_path / "pics", per_class=1, seed=2)
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", refused_model)
    assert out.exit_code == 0, out.stderr
    reason = refusal(key_for_spec(parse_model_spec(refused_model)))
    note = f"note: ONNX Runtime cannot run {refused_model} ({reason}): using PyTorch"
    assert note in out.stdout.splitlines()
    assert reason.startswith("its image vectors from ONNX Runtime differ from PyTorch's (lowest cosine ")
    out = invoke("search", "a red circle", "--library", str(tmp_path / "lib"), "-k", "1")
    assert out.exit_code == 0 and out.stderr == note + "\n"
    assert out.stdout.split("  ", 1)[1].strip() in {str(p) for p in pictures}
    out = invoke("search", "a red circle", "--library", str(tmp_path / "lib"), "--backend", "onnx")
    assert out.exit_code == 2
    assert out.stderr == f"Error: ONNX backend unavailable for {refused_model}: {reason}\n"


def test_backend_values_are_checked(library):
    out = invoke("search", "x", "--library", str(library.path), "--backend", "tensorflow")
    assert out.exit_code == 2
    assert out.stderr == ("Error: Invalid value for '--backend': 'tensorflow' is not one of 'auto', 'onnx', 'torch'. "
                          "(see: clipdex search --help)\n")
    out = invoke("search", "x", "--library", str(library.path), env={"CLIPDEX_BACKEND": "jax"})
    assert out.exit_code == 2 and "'jax' is not one of 'auto', 'onnx', 'torch'" in out.stderr
    out = invoke("search", "a red circle", "--library", str(library.path), "-k", "1",
                 env={"CLIPDEX_BACKEND": "TORCH"})
    assert out.exit_code == 0, out.stderr
    with pytest.raises(Exception, match=r"^unknown backend 'tpu' \(choose from auto, onnx, torch\)$"):
        Encoder(TINY_MODEL, backend="tpu")


def test_onnx_on_a_gpu_device_is_refused_and_auto_uses_pytorch_there():
    with pytest.raises(BackendUnavailable, match="it runs on the CPU, not on cuda"):
        Encoder(TINY_MODEL, device="cuda", backend="onnx").load()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(),
                    reason="no CUDA GPU here: the fp16 PyTorch path on a GPU is unverified on this machine")
def test_auto_indexes_with_pytorch_half_precision_on_a_gpu(tmp_path):
    encoder = Encoder(TINY_MODEL, bulk=True).load()
    assert encoder.backend == "torch"
    pixels = np.random.default_rng(0).integers(0, 256, (4, encoder.image_size, encoder.image_size, 3), np.uint8)
    cpu = Encoder(TINY_MODEL, backend="onnx").encode_pixels(pixels)
    assert np.sum(cpu * encoder.encode_pixels(pixels), axis=1).min() > 0.99


def test_a_repeated_query_gives_the_same_vector_and_callers_cannot_spoil_it():
    encoder = Encoder(TINY_MODEL)
    first = encoder.encode_texts(["a red circle"])
    want = first.copy()
    first[:] = 0  # a caller scribbling on its answer
    assert np.array_equal(encoder.encode_texts(["a red circle"]), want)
    assert np.allclose(encoder.encode_texts(["a red circle", "a blue star"])[0], want[0], atol=1e-6)
