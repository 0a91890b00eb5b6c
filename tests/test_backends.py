"""Choosing what runs the model (#8): ONNX Runtime by default on the CPU, PyTorch when asked for or when
the model's export is refused; the query path never imports torch; vectors of both backends mix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert note in out.stderr.splitlines() and note not in out.stdout
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


@pytest.fixture
def fresh_model(tmp_path) -> str:
    """A copy of the tiny model: a model no cache has an export of yet."""
    shutil.copytree(tiny_model_dir(), tmp_path / "fresh-model")
    return f"local-dir:{tmp_path / 'fresh-model'}"


def test_an_export_cache_that_cannot_be_written_falls_back_or_says_why(tmp_path, fresh_model, library):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    cache = blocker / "onnx"
    env = {"CLIPDEX_ONNX_CACHE": str(cache)}
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4)
    out = invoke("index", str(pics), "--library", str(tmp_path / "lib"), "--model", fresh_model, env=env)
    assert out.exit_code == 0, out.stderr
    assert (f"note: ONNX Runtime cannot run {fresh_model} (cannot create the export cache {cache} (Not a directory; "
            "CLIPDEX_ONNX_CACHE chooses another folder)): using PyTorch") in out.stderr.splitlines()
    out = invoke("search", "a red circle", "--library", str(tmp_path / "lib"), "--backend", "onnx", env=env)
    assert out.exit_code == 2
    assert out.stderr == (f"Error: ONNX backend unavailable for {fresh_model}: cannot create the export cache {cache} "
                          "(Not a directory; CLIPDEX_ONNX_CACHE chooses another folder)\n")
    assert refusal(key_for_spec(parse_model_spec(fresh_model)), cache) is None  # not the model's fault


def test_a_damaged_export_is_made_again(tmp_path, fresh_model, monkeypatch):
    monkeypatch.setenv("CLIPDEX_ONNX_CACHE", str(tmp_path / "cache"))
    first = Encoder(fresh_model, backend="onnx").load()
    want = first.encode_texts(["a red circle", "a blue star"])
    folder = find(key_for_spec(parse_model_spec(fresh_model)))
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["files"]) >= {"image.onnx", "image.onnx.data", "text.onnx", "text.onnx.data", "bpe_merges.txt"}
    assert all((folder / name).stat().st_mode & 0o044 == 0o044 for name in meta["files"])  # readable by others
    with open(folder / "text.onnx.data", "r+b") as fh:  # a disk that lost the end of the weights
        fh.truncate(1000)
    assert find(key_for_spec(parse_model_spec(fresh_model))) is None
    again = Encoder(fresh_model, backend="onnx").load()
    assert np.allclose(again.encode_texts(["a red circle", "a blue star"]), want, atol=1e-6)
    (folder / "bpe_merges.txt").write_text("garbage")  # same name, other size
    assert find(key_for_spec(parse_model_spec(fresh_model))) is None
    meta = json.loads((folder.parent / folder.name / "meta.json").read_text()) if folder.exists() else meta
    meta["files"]["../../etc/passwd"] = 1  # a name reaching outside the folder is never trusted
    (tmp_path / "cache" / folder.name).mkdir(exist_ok=True)
    (tmp_path / "cache" / folder.name / "meta.json").write_text(json.dumps(meta))
    assert find(key_for_spec(parse_model_spec(fresh_model))) is None


def _hostile_image_graph(path: Path, nan: bool) -> None:
    """An image graph that takes the pixels and answers 3-long vectors, or NaN ones of the right length."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0)]
    if nan:
        nodes += [helper.make_node("Sub", ["m", "m"], ["z"]), helper.make_node("Div", ["z", "z"], ["n"]),
                  helper.make_node("Tile", ["n", "reps"], ["embedding"])]
        inits = [helper.make_tensor("reps", TensorProto.INT64, [2], [1, 22])]  # 3 x 22 = 66 columns, cut below
        nodes[-1:] = [helper.make_node("Tile", ["n", "reps"], ["t"]),
                      helper.make_node("Slice", ["t", "starts", "ends", "axes"], ["embedding"])]
        inits += [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("starts", 0), ("ends", 64),
                                                                                  ("axes", 1))]
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["embedding"]))
        inits = []
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                                              [None, 64, 64, 3])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("nan", [False, True], ids=["wrong-length", "nan"])
def test_a_tampered_image_graph_never_writes_its_vectors(tmp_path, fresh_model, monkeypatch, nan):
    """A co-user of a shared cache swaps the image graph (and fixes meta.json's sizes to match): indexing
    stops with one line, and the library holds no vector of it."""
    monkeypatch.setenv("CLIPDEX_ONNX_CACHE", str(tmp_path / "cache"))
    Encoder(fresh_model, backend="onnx").load()
    folder = find(key_for_spec(parse_model_spec(fresh_model)))
    _hostile_image_graph(folder / "image.onnx", nan)
    (folder / "image.onnx.data").unlink()
    meta = json.loads((folder / "meta.json").read_text())
    del meta["files"]["image.onnx.data"]
    meta["files"]["image.onnx"] = (folder / "image.onnx").stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta))
    assert find(key_for_spec(parse_model_spec(fresh_model))) == folder
    write_collection(tmp_path / "pics", per_class=1, seed=6)
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", fresh_model,
                 "--backend", "onnx")
    assert out.exit_code == 2
    what = "vectors that are not finite" if nan else "vectors of shape (24, 3), not 64-long"
    assert out.stderr == (f"Error: ONNX backend unavailable for {fresh_model}: its image tower in {folder} cannot "
                          f"be used (it gave {what}); delete that folder and it is exported again\n")
    assert not (tmp_path / "lib").exists()  # the first run made nothing: no library left behind


def test_a_fifo_in_the_cache_is_refused_not_waited_on(tmp_path, fresh_model, monkeypatch):
    monkeypatch.setenv("CLIPDEX_ONNX_CACHE", str(tmp_path / "cache"))
    key = key_for_spec(parse_model_spec(fresh_model))
    key.folder().mkdir(parents=True)
    os.mkfifo(key.folder() / "meta.json")
    os.mkfifo(key.refusal_file())
    assert find(key) is None and refusal(key) is None  # at once: nobody writes to those FIFOs


def test_an_updated_hub_repository_gets_a_new_export(tmp_path, monkeypatch):
    """PyTorch loads the newest weights the Hugging Face cache holds: the export key follows that revision."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = parse_model_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    none_yet = key_for_spec(spec)
    refs = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("1a2b3c\n")
    first = key_for_spec(spec)
    (refs / "main").write_text("4d5e6f\n")
    assert len({none_yet.digest, first.digest, key_for_spec(spec).digest}) == 3
    (refs / "main").write_text("1a2b3c\n")
    assert key_for_spec(spec).digest == first.digest
