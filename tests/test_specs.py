"""Fast unit tests: model specs, model messages, query building and filter parsing (no library needed)."""

from __future__ import annotations

import datetime as dt
import shutil
import sys

import numpy as np
import pytest

from clipdex.errors import ModelUnavailable, UsageError
from clipdex.models import DEFAULT_MODEL, Encoder, ModelSpec, parse_model_spec, tiny_model_dir
from clipdex.search import build_query, day_range, parse_day
from clipdex.torchclip import TorchEncoder

# -- model specs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,parsed,identity", [
    ("tiny", ModelSpec("tiny", "tiny"), "clipdex:tiny-shapes"),
    ("  tiny ", ModelSpec("tiny", "tiny"), "clipdex:tiny-shapes"),
    (DEFAULT_MODEL, ModelSpec("builtin", "ViT-B-32", "datacomp_xl_s13b_b90k"), DEFAULT_MODEL),
    ("RN50:openai", ModelSpec("builtin", "RN50", "openai"), "RN50:openai"),
    ("hf-hub:laion/CLIP-ViT-B-32", ModelSpec("hf-hub", "laion/CLIP-ViT-B-32"), "hf-hub:laion/CLIP-ViT-B-32"),
    ("local-dir:/models/x", ModelSpec("local-dir", "/models/x"), "local-dir:/models/x"),
])
def test_model_specs_parse(spec, parsed, identity):
    assert parse_model_spec(spec) == parsed
    assert parsed.identity == identity


def test_local_dir_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse_model_spec("local-dir:models/x").name == str(tmp_path / "models" / "x")
    assert parse_model_spec("local-dir:~/m").name == str(tmp_path / "home" / "m")


def test_spec_names_round_trip():
    tiny = parse_model_spec("tiny")
    assert (str(tiny), tiny.open_clip_name) == ("tiny", f"local-dir:{tiny_model_dir()}")
    assert str(parse_model_spec("ViT-B-32:openai")) == "ViT-B-32:openai"
    assert parse_model_spec("ViT-B-32:openai").open_clip_name == "ViT-B-32"
    assert parse_model_spec("hf-hub:a/b").open_clip_name == "hf-hub:a/b"


@pytest.mark.parametrize("spec,message", [
    ("ViT-B-32", "bad model spec 'ViT-B-32': expected ARCH:PRETRAINED_TAG"),
    (":openai", "bad model spec ':openai': expected ARCH:PRETRAINED_TAG"),
    ("ViT-B-32:", "bad model spec 'ViT-B-32:': expected ARCH:PRETRAINED_TAG"),
    ("", "bad model spec '': expected ARCH:PRETRAINED_TAG"),
    ("hf-hub:", "bad model spec 'hf-hub:': expected hf-hub:ORG/REPO"),
    ("hf-hub:a/b/c", "bad model spec 'hf-hub:a/b/c': expected hf-hub:ORG/REPO"),
    ("hf-hub:/b", "bad model spec 'hf-hub:/b': expected hf-hub:ORG/REPO"),
    ("local-dir:", "bad model spec 'local-dir:': expected local-dir:/path/to/folder"),
])
def test_bad_specs_say_what_is_expected(spec, message):
    with pytest.raises(ModelUnavailable) as err:
        parse_model_spec(spec)
    assert str(err.value).startswith(message)
    assert "--" not in str(err.value)  # the library never names command-line flags


def test_unfetchable_weights_carry_a_field_not_a_flag():
    with pytest.raises(ModelUnavailable) as err:
        Encoder("ViT-B-32:laion2b_s34b_b79k").load()
    assert err.value.fetch_failed
    assert str(err.value) == ("cannot fetch weights for ViT-B-32:laion2b_s34b_b79k: no network access and they "
                              "are not in the local cache")


def test_unknown_architecture_message_is_one_line_with_neighbours():
    from clipdex.models import unknown_architecture_message

    listing = f'list them all with: {sys.executable} -c "import open_clip; print(open_clip.list_models())"'
    known = ["ViT-B-32", "ViT-B-16", "RN50"]
    assert unknown_architecture_message("ViT-B-23", known) == (
        f"unknown model architecture 'ViT-B-23' (similar: ViT-B-32, ViT-B-16; {listing})")
    assert unknown_architecture_message("vit-b-32", known).startswith(
        "unknown model architecture 'vit-b-32' (similar: ViT-B-32, ")
    assert unknown_architecture_message("Q", known) == f"unknown model architecture 'Q' ({listing})"


def test_a_loaded_model_is_shared_until_its_files_change(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), folder)
    spec = parse_model_spec(f"local-dir:{folder}")
    first = TorchEncoder(spec).torch_parts()[0]
    assert TorchEncoder(spec).torch_parts()[0] is first
    config = folder / "open_clip_config.json"
    config.write_text(config.read_text() + "\n")
    assert TorchEncoder(spec).torch_parts()[0] is not first


# -- query building --------------------------------------------------------------------------------------------


def test_a_missing_query_image_fails_before_the_model_loads(tmp_path):
    encoder = Encoder("tiny")
    with pytest.raises(UsageError) as err:
        build_query(encoder, text="a cat", image=tmp_path / "gone.jpg")
    assert str(err.value) == f"query image not found: {tmp_path / 'gone.jpg'}"
    assert not encoder.is_loaded


def test_a_broken_symlink_query_image_is_not_found(tmp_path):
    (tmp_path / "link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(UsageError, match="^query image not found: .*link.jpg$"):
        build_query(Encoder("tiny"), image=tmp_path / "link.jpg")


@pytest.mark.parametrize("kwargs", [{}, {"text": ""}, {"text": " \t"}, {"negative": "red"},
                                    {"text": " ", "negative": "x"}])
def test_nothing_to_search_for(encoder, kwargs):
    with pytest.raises(UsageError) as err:
        build_query(encoder, **kwargs)
    assert str(err.value) == "nothing to search for: give a text, an example picture, or both"


def test_query_vectors_are_unit_length_and_blank_negatives_are_ignored(encoder):
    text = build_query(encoder, "a red circle")
    assert text.dtype == np.float32 and np.isclose(np.linalg.norm(text), 1.0, atol=1e-5)
    assert np.allclose(build_query(encoder, "a red circle", negative="  "), text)
    raw = np.full(text.shape, 3.0, np.float32)  # an image vector need not be normalised
    assert np.isclose(np.linalg.norm(build_query(encoder, image_vector=raw)), 1.0, atol=1e-5)
    assert np.allclose(build_query(encoder, text="  ", image_vector=raw), raw / np.linalg.norm(raw))


def test_a_negative_equal_to_the_query_does_not_divide_by_zero(encoder):
    q = build_query(encoder, "a red circle", negative="a red circle")
    assert np.all(np.isfinite(q))


# -- dates -----------------------------------------------------------------------------------------------------


def test_days_parse_and_ranges_include_both_ends():
    assert parse_day("2024-02-29", "from") == dt.date(2024, 2, 29)
    assert parse_day(" 2024-02-29 ", "from") == dt.date(2024, 2, 29)
    assert parse_day(None, "from") is None and parse_day("", "from") is None
    assert day_range(dt.date(2024, 1, 31), dt.date(2024, 1, 31)) == (dt.datetime(2024, 1, 31), dt.datetime(2024, 2, 1))
    assert day_range(None, dt.date(2024, 12, 31)) == (None, dt.datetime(2025, 1, 1))
    assert day_range(None, None) == (None, None)


@pytest.mark.parametrize("raw", ["2023-02-29", "2024-13-01", "yesterday", "2024/01/01", "x" * 100])
def test_bad_days_name_the_parameter(raw):
    with pytest.raises(UsageError) as err:
        parse_day(raw, "to")
    assert str(err.value) == f"to must be a date like 2024-07-31, got {raw[:40]!r}"



@pytest.mark.parametrize("spec", ["local-dir:/does/not/exist", "ViT-Q-99:x"])
def test_model_mistakes_that_need_no_download_fail_before_torch_is_imported(spec):
    import subprocess
    import sys

    code = ("import sys\nfrom clipdex.errors import ModelUnavailable\nfrom clipdex.models import Encoder\n"
            f"try:\n    Encoder({spec!r}).load()\nexcept ModelUnavailable as exc:\n    print(exc)\n"
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[-1] == "False False", out.stdout + out.stderr
    assert lines[0].startswith(("model folder not found", "unknown model architecture 'ViT-Q-99'"))
