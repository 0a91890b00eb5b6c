"""The CLI: exact user-facing output, errors and exit codes.

Most tests run the commands in this process (``invoke``); a few start the real entry point
in a subprocess, for what only a fresh interpreter shows: exit codes and stderr as a shell
sees them, and ``--help`` answering without importing torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from clipdex.models import tiny_model_dir
from tests.conftest import BOTH, invoke, run_cli

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL

FETCH_HINT = ("; download it on a connected machine and point --model local-dir:DIR at a folder holding "
              "open_clip_config.json and the weights")


# -- a real interpreter: exit codes and stderr as a shell sees them --------------------------------------------

def test_help_is_instant_and_imports_no_model_code():
    code = "import sys; from clipdex.cli import main; assert 'torch' not in sys.modules and 'faiss' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    out = run_cli("--help")
    assert out.returncode == 0 and "Search and tag your pictures" in out.stdout
    for command in ("index", "search", "tag", "info", "skipped", "demo"):
        assert command in out.stdout


def test_search_without_a_library(library_at):
    out = run_cli("search", "a cat", "--library", library_at)
    assert out.returncode == 1
    assert out.stderr == (f"Error: no library at {library_at} (create one with: clipdex index PATH --library "
                          f"{library_at})\n")


def test_a_bad_date_is_one_line_and_exit_2(tmp_path):
    out = run_cli("search", "a cat", "--from", "2024-13-01", "--library", str(tmp_path))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "Error: --from must be a date like 2024-07-31, got '2024-13-01'\n"


# -- in process ----------------------------------------------------------------------------------------------

def test_index_a_missing_path(tmp_path, library_at, backend):
    out = invoke("index", str(tmp_path / "nowhere"), "--library", library_at, "--model", "tiny")
    assert (out.exit_code, out.stderr) == (2, f"Error: path not found: {tmp_path / 'nowhere'}\n")
    info = invoke("info", "--library", library_at)
    if backend == "sqlite":  # the library it was about to create is not there
        assert info.stderr == f"Error: no library at {library_at} (create one with: clipdex index PATH --library " \
                              f"{library_at})\n"
    else:  # a server's tables stay (another writer may use them already): an empty library
        assert info.stderr == f"Error: library at {library_at} is empty (run: clipdex index PATH --library " \
                              f"{library_at})\n"
    assert info.exit_code == 1


def test_unfetchable_weights_fail_fast_with_one_line(tmp_path):
    (tmp_path / "pics").mkdir()
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"),
                 "--model", "ViT-B-32:laion2b_s34b_b79k")
    assert out.exit_code == 2
    assert out.stderr == ("Error: cannot fetch weights for ViT-B-32:laion2b_s34b_b79k: no network access and they "
                          f"are not in the local cache{FETCH_HINT}\n")


LIST_ALL = f'list them all with: {sys.executable} -c "import open_clip; print(open_clip.list_models())"'


@pytest.mark.parametrize("spec,message", [
    ("nonsense", "Error: bad model spec 'nonsense': expected ARCH:PRETRAINED_TAG (e.g. ViT-B-32:datacomp_xl_s13b_b90k),"
                 " hf-hub:ORG/REPO, local-dir:/path or tiny\n"),
    ("ViT-Q-99:foo", f"Error: unknown model architecture 'ViT-Q-99' (similar: ViT-S-32, ViT-S-16, ViT-M-32; "
                     f"{LIST_ALL})\n"),
    ("vit-b-32:openai", f"Error: unknown model architecture 'vit-b-32' (similar: ViT-B-32, ViT-S-32, ViT-M-32; "
                        f"{LIST_ALL})\n"),
    ("Zebra-9:x", f"Error: unknown model architecture 'Zebra-9' ({LIST_ALL})\n"),
    ("local-dir:/does/not/exist", "Error: model folder not found: /does/not/exist\n"),
    ("hf-hub:justaname", "Error: bad model spec 'hf-hub:justaname': expected hf-hub:ORG/REPO\n"),
])
def test_bad_model_specs(tmp_path, spec, message):
    (tmp_path / "pics").mkdir()
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", spec)
    assert (out.exit_code, out.stderr) == (2, message)


def test_unknown_pretrained_tag_lists_the_known_ones(tmp_path):
    (tmp_path / "pics").mkdir()
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", "ViT-B-32:nosuchtag")
    assert out.exit_code == 2
    assert out.stderr.startswith("Error: unknown pretrained tag 'nosuchtag' for ViT-B-32 (known: openai, ")
    assert out.stderr.count("\n") == 1


def test_local_dir_without_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_model_dir() / "open_clip_config.json", model)
    (tmp_path / "pics").mkdir()
    out = invoke("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", f"local-dir:{model}")
    assert out.exit_code == 2
    assert out.stderr == f"Error: model folder {model} has no weights (*.safetensors, *.bin, *.pth)\n"


def test_full_cli_flow_with_json(lib_dir, collection):
    lib = lib_dir  # a private copy of the shared library: a folder, or a database's URL
    root = next(iter(collection)).parent.parent

    out = invoke("index", str(root), "--library", str(lib), "--json")
    stats = json.loads(out.stdout)
    assert out.exit_code == 0 and (stats["indexed"], stats["unchanged"], stats["skipped"]) == (0, 120, 0)
    human = invoke("index", str(root), "--library", str(lib))
    assert human.stdout.startswith("indexed 0 · unchanged 120 · moved 0 · removed 0 · skipped 0 · ")

    found = json.loads(invoke("search", "a red circle", "-k", "3", "--library", str(lib), "--json").stdout)
    assert [r["path"].split("/")[-2:][0] for r in found["results"]] == ["red"] * 3
    assert set(found["results"][0]) == {"id", "path", "score", "relevance", "width", "height", "captured_at"}
    assert found["why_empty"] == []

    text = invoke("search", "a red circle", "-k", "2", "--library", str(lib)).stdout.splitlines()
    assert len(text) == 2 and all("/red/circle-" in line for line in text)

    tagged = json.loads(invoke("tag", "--labels", "red,green,blue,yellow,purple,orange", "--library", str(lib),
                               "--json").stdout)
    assert tagged["images"] == 120 and sum(tagged["counts"].values()) == 120
    only_red = json.loads(invoke("search", "a shape", "--tag", "red", "--library", str(lib), "--json").stdout)
    assert only_red["results"] and all("/red/" in r["path"] for r in only_red["results"])

    csv_out = invoke("tags", "export", "--format", "csv", "--library", str(lib)).stdout.splitlines()
    assert csv_out[0] == "id,path,label,probability,source,pass" and len(csv_out) == 121

    info = json.loads(invoke("info", "--library", str(lib), "--json").stdout)
    assert (info["images"], info["model"], info["embedding_dim"], info["index_type"], info["demo"]) == (
        120, "tiny", 64, "flat", False)
    assert info["tagged_images"] == 120 and info["size_bytes"] > 0

    assert json.loads(invoke("skipped", "--library", str(lib), "--json").stdout) == []


def test_query_with_another_model_is_refused(tmp_path, library):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir(), other)
    out = invoke("search", "a cat", "--library", library.location, "--model", f"local-dir:{other}")
    assert out.exit_code == 2
    assert out.stderr == (f"Error: library {library.location} was built with model tiny, not local-dir:{other}: their "
                          f"vectors cannot be compared (omit --model, or switch the library to it, the current "
                          f"model answering meanwhile: clipdex index PATH --model local-dir:{other}; clipdex models "
                          f"lists what it holds)\n")


@pytest.mark.parametrize("args,message", [
    (["search", "a cat", "-k", "0"],
     "Error: Invalid value for '-k': 0 is not in the range 1<=x<=1000. (see: clipdex search --help)\n"),
    (["search"], "Error: nothing to search for: give a text query, --image PATH, or both\n"),
    (["search", "  "], "Error: nothing to search for: give a text query, --image PATH, or both\n"),
    (["search", "a cat", "--to", "2024-02-30"], "Error: --to must be a date like 2024-07-31, got '2024-02-30'\n"),
    (["search", "--image", "missing.jpg"], "Error: query image not found: missing.jpg\n"),
    (["tag", "--labels", "cat"], "Error: need at least two distinct labels to choose between, got 1\n"),
    (["tag"], "Error: give exactly one of --labels, --labels-file or --probe\n"),
    (["tags", "export", "--format", "xml"],
     "Error: Invalid value for '--format': 'xml' is not one of 'csv', 'json', 'xmp'. "
     "(see: clipdex tags export --help)\n"),
])
def test_usage_errors(library, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    out = invoke(*args, "--library", library.location)
    assert out.exit_code == 2
    if message.startswith("Error: "):
        assert out.stderr == message
    else:
        assert message in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("args,message", [
    (["index", "x", "--timeout", "0"], "Invalid value for '--timeout': 0.0 is not in the range x>=0.1. "
     "(see: clipdex index --help)"),
    (["serve", "--port", "99999"], "Invalid value for '--port': 99999 is not in the range 0<=x<=65535. "
     "(see: clipdex serve --help)"),
    (["index"], "Missing argument 'PATHS...'. (see: clipdex index --help)"),
    (["nosuch"], "No such command 'nosuch'. (see: clipdex --help)"),
    (["--bogus"], "No such option '--bogus'. (see: clipdex --help)"),
    (["search", "--bogus"], "No such option '--bogus'. (see: clipdex search --help)"),
])
def test_parser_mistakes_take_one_line(args, message):
    out = invoke(*args)
    assert (out.exit_code, out.stdout, out.stderr) == (2, "", f"Error: {message}\n")


def test_rebuild_from_the_cli_reencodes_everything(tmp_path, library_at):
    from clipdex.synthetic import write_collection

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4)
    lib = library_at
    first = json.loads(invoke("index", str(pics), "--library", lib, "--model", "tiny", "--json").stdout)
    assert first["encoded"] == 24
    again = json.loads(invoke("index", str(pics), "--library", lib, "--rebuild", "--json").stdout)
    assert (again["indexed"], again["encoded"], again["unchanged"]) == (24, 24, 0)
