"""The real CLI in a subprocess: exact user-facing output, errors and exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from clipdex.models import tiny_model_dir
from tests.conftest import run_cli


def test_help_is_instant_and_imports_no_model_code():
    code = "import sys; from clipdex.cli import main; assert 'torch' not in sys.modules and 'faiss' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    out = run_cli("--help")
    assert out.returncode == 0 and "Search and tag your pictures" in out.stdout
    for command in ("index", "search", "tag", "info", "skipped", "demo"):
        assert command in out.stdout


def test_search_without_a_library(tmp_path):
    missing = tmp_path / "none"
    out = run_cli("search", "a cat", "--library", str(missing))
    assert out.returncode == 1
    assert out.stderr == f"Error: no library at {missing} (create one with: clipdex index PATH --library {missing})\n"


def test_index_a_missing_path(tmp_path):
    out = run_cli("index", str(tmp_path / "nowhere"), "--library", str(tmp_path / "lib"), "--model", "tiny")
    assert (out.returncode, out.stderr) == (2, f"Error: path not found: {tmp_path / 'nowhere'}\n")


def test_unfetchable_weights_fail_fast_with_one_line(tmp_path):
    (tmp_path / "pics").mkdir()
    out = run_cli("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"),
                  "--model", "ViT-B-32:laion2b_s34b_b79k", timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("Error: cannot fetch weights for ViT-B-32:laion2b_s34b_b79k: ")
    assert "point --model local-dir:DIR at a folder holding open_clip_config.json and the weights" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("spec,message", [
    ("nonsense", "Error: bad model spec 'nonsense': expected ARCH:PRETRAINED_TAG"),
    ("ViT-Q-99:foo", "Error: unknown model architecture 'ViT-Q-99'"),
    ("ViT-B-32:nosuchtag", "Error: unknown pretrained tag 'nosuchtag' for ViT-B-32 (known: openai, "),
    ("local-dir:/does/not/exist", "Error: model folder not found: /does/not/exist"),
    ("hf-hub:justaname", "Error: bad model spec 'hf-hub:justaname': expected hf-hub:ORG/REPO"),
])
def test_bad_model_specs(tmp_path, spec, message):
    (tmp_path / "pics").mkdir()
    out = run_cli("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", spec)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(message), out.stderr


def test_local_dir_without_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_model_dir() / "open_clip_config.json", model)
    (tmp_path / "pics").mkdir()
    out = run_cli("index", str(tmp_path / "pics"), "--library", str(tmp_path / "lib"), "--model", f"local-dir:{model}")
    assert out.returncode == 2
    assert out.stderr == f"Error: model folder {model} has no weights (*.safetensors, *.bin, *.pth)\n"


def test_full_cli_flow_with_json(tmp_path, library, collection):
    lib = tmp_path / "lib"
    shutil.copytree(library.path, lib)
    root = next(iter(collection)).parent.parent

    out = run_cli("index", str(root), "--library", str(lib), "--json")
    stats = json.loads(out.stdout)
    assert out.returncode == 0 and (stats["indexed"], stats["unchanged"], stats["skipped"]) == (0, 120, 0)
    human = run_cli("index", str(root), "--library", str(lib))
    assert human.stdout.startswith("indexed 0 · unchanged 120 · moved 0 · removed 0 · skipped 0 · ")

    found = json.loads(run_cli("search", "a red circle", "-k", "3", "--library", str(lib), "--json").stdout)
    assert [r["path"].split("/")[-2:][0] for r in found["results"]] == ["red"] * 3
    assert set(found["results"][0]) == {"id", "path", "score", "width", "height", "captured_at"}

    text = run_cli("search", "a red circle", "-k", "2", "--library", str(lib)).stdout.splitlines()
    assert len(text) == 2 and all("/red/circle-" in line for line in text)

    tagged = json.loads(run_cli("tag", "--labels", "red,green,blue,yellow,purple,orange", "--library", str(lib),
                                "--json").stdout)
    assert tagged["images"] == 120 and sum(tagged["counts"].values()) == 120
    only_red = json.loads(run_cli("search", "a shape", "--tag", "red", "--library", str(lib), "--json").stdout)
    assert only_red["results"] and all("/red/" in r["path"] for r in only_red["results"])

    csv_out = run_cli("tags", "export", "--format", "csv", "--library", str(lib)).stdout.splitlines()
    assert csv_out[0] == "id,path,label,probability,source" and len(csv_out) == 121

    info = json.loads(run_cli("info", "--library", str(lib), "--json").stdout)
    assert (info["images"], info["model"], info["embedding_dim"], info["index_type"]) == (
        120, "tiny", 64, "IndexIDMap2(IndexFlatIP)")
    assert info["tagged_images"] == 120 and info["size_bytes"] > 0

    assert json.loads(run_cli("skipped", "--library", str(lib), "--json").stdout) == []
    assert run_cli("skipped", "--library", str(lib)).stdout == "No skipped files.\n"


def test_query_with_another_model_is_refused(tmp_path, library):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir(), other)
    out = run_cli("search", "a cat", "--library", str(library.path), "--model", f"local-dir:{other}")
    assert out.returncode == 2
    assert out.stderr == (f"Error: library {library.path} was built with model tiny, not local-dir:{other}: their "
                          f"vectors cannot be compared (omit --model, or re-encode everything with: clipdex index "
                          f"PATH --rebuild --model local-dir:{other})\n")


@pytest.mark.parametrize("args,code,message", [
    (["search", "a cat", "-k", "0"], 2, "Invalid value for '-k': 0 is not in the range 1<=x<=1000."),
    (["search"], 2, "Error: nothing to search for: give a text query, --image PATH, or both"),
    (["tag", "--labels", "cat"], 2, "Error: need at least two distinct labels to choose between, got 1"),
    (["tag"], 2, "Error: give exactly one of --labels or --labels-file"),
    (["tags", "export", "--format", "xml"], 2, "Invalid value for '--format': 'xml' is not one of 'csv', 'json'."),
])
def test_usage_errors(library, args, code, message):
    out = run_cli(*args, "--library", str(library.path))
    assert out.returncode == code
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_runs_offline(tmp_path):
    out = run_cli("demo", "--library", str(tmp_path / "demo-lib"), "--pictures", str(tmp_path / "demo-pics"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["index"]["indexed"] == 72
    first = report["searches"][0]
    assert first["query"] == "a red circle"
    assert all("/red/circle-" in r["path"] for r in first["results"][:3])
    assert report["tagging"]["accuracy"] >= 0.9


def test_rebuild_from_the_cli_reencodes_everything(tmp_path):
    from clipdex.synthetic import write_collection

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4)
    lib = str(tmp_path / "lib")
    first = json.loads(run_cli("index", str(pics), "--library", lib, "--model", "tiny", "--json").stdout)
    assert first["encoded"] == 24
    again = json.loads(run_cli("index", str(pics), "--library", lib, "--rebuild", "--json").stdout)
    assert (again["indexed"], again["encoded"], again["unchanged"]) == (24, 24, 0)
