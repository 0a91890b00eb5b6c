"""The ONNX Runtime path (#8): tokenizer port, export + verification, the export cache, the torch-free runtime."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipdex.imaging import load_for_model
from clipdex.models import TINY_MODEL, parse_model_spec, tiny_model_dir
from clipdex.onnx import BackendUnavailable
from clipdex.onnx.cache import CACHE_ENV, CacheKey, ExportSettings, find, installed_versions, key_for_spec, refusal
from clipdex.onnx.export import TOKEN_PROBES, export_to_cache, torch_parts
from clipdex.onnx.runtime import OnnxEncoder
from clipdex.onnx.tokenizer import ClipTokenizer

# -- tokenizer port ----------------------------------------------------------------------------------------------

_POOLS = [
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "    \t\n",
    ".,;:!?'\"-()[]{}/\\@#$%^*+=<>|~`_", "&amp;&lt;&gt;&#39;&quot;", "éèêëàâäôöûüçñßøåæœÉÀÇ", "αβγδεζηθλμπσςωΑΒΓΔ",
    "абвгдежзийклмнопрстуфхцчшщыэюя", "東京大阪日本語中文漢字かなカナ한국어", "😀🐶🌃👍🏽👨‍👩‍👧❤️",
    "\u0301\u0308\u200b\u200d\ufeff", "ﬁﬂＡＢＣ１２３“”‘’–—…",
    "\x00\x07\x1b\x7f\x85\u2028", "مرحبا עברית हिन्दी ไทย",
]
_WORDS = ["a", "photo", "of", "the", "dog", "don't", "it's", "we're", "I'M", "they'll", "cat's", "2023", "3.14",
          "hello_world", "e-mail", "naïve", "Ünïcödé", "CafÃ©", "<b>", "&amp;amp;", "...", "!!!", "a.k.a."]


def _varied_strings(n: int, seed: int = 0) -> list[str]:
    """``n`` reproducible strings: word salads, random characters from mixed scripts, empty and very long ones."""
    rng = random.Random(seed)
    out = ["", " ", "\n\t", "a", "A RED CIRCLE", "x " * 200, "longword" * 40, *TOKEN_PROBES]
    while len(out) < n:
        if rng.random() < 0.5:
            out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 40))))
        else:
            pools = rng.sample(_POOLS, rng.randint(1, 4))
            out.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 120))))
    return out


def test_tokenizer_port_gives_open_clips_tokens_exactly():
    texts = _varied_strings(400)
    ours, theirs = ClipTokenizer(), open_clip.get_tokenizer("ViT-B-32")
    got, want = ours(texts), theirs(texts).numpy()
    assert got.dtype == np.int64 and got.shape == (400, 77)
    mismatched = [t for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
    assert mismatched == []
    assert (got[:, -1] != 0).sum() >= 10  # some texts were cut to 77 tokens ...
    assert all(row[-1] == ours.eot_token_id for row in got if row[-1] != 0)  # ... and still end with the end token


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_tokenizer_port_other_cleanings_and_context_lengths(clean):
    texts = _varied_strings(120, seed=1)
    ours = ClipTokenizer(context_length=16, clean=clean)
    theirs = open_clip.tokenizer.SimpleTokenizer(context_length=16, clean=clean)
    assert np.array_equal(ours(texts), theirs(texts).numpy())


def test_plain_ascii_skips_ftfy_because_ftfy_leaves_it_unchanged():
    """The port imports ftfy only for texts ftfy could change (its import costs start-up time)."""
    import ftfy

    from clipdex.onnx.tokenizer import _NEEDS_FTFY

    rng = random.Random(2)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"] + ["\t", "\n"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert not _NEEDS_FTFY.search(text)
        assert ftfy.fix_text(text) == text
    assert all(_NEEDS_FTFY.search(t) for t in ["&amp;", "caf\u00e9", "\r\n", "\x1b[31m", "\x00"])


# -- export, verification, runtime -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, encoder) -> Path:
    """The tiny model exported once into a private cache root."""
    root = tmp_path_factory.mktemp("onnx-cache")
    export_to_cache(key_for_spec(parse_model_spec(TINY_MODEL)), lambda: torch_parts(parse_model_spec(TINY_MODEL)),
                    root)
    return root


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_tiny_model_onnx_vectors_match_pytorch(tiny_cache, encoder, collection):
    onnx = OnnxEncoder.from_cache(parse_model_spec(TINY_MODEL), root=tiny_cache)
    paths = list(collection)[::12]
    pixels = np.stack([load_for_model(p, encoder.image_size, encoder.resize_mode)[0] for p in paths])
    got, want = onnx.encode_pixels(pixels), encoder.encode_pixels(pixels)
    assert got.dtype == np.float32 and got.shape == want.shape == (10, 64)
    assert _cosines(got, want).min() >= 0.999
    assert onnx.meta["text"]["cut"] is True  # CLIP's causal text tower: queries run only as long as they are
    texts = _varied_strings(150, seed=4)  # more than one chunk of 64, of every length, sorted and put back
    got, want = onnx.encode_texts(texts), encoder.encode_texts(texts)
    assert _cosines(got, want).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (onnx.image_size, onnx.resize_mode, onnx.dim) == (encoder.image_size, encoder.resize_mode, encoder.dim)
    assert onnx.logit_scale == pytest.approx(encoder.logit_scale, rel=1e-6)
    assert onnx.encode_texts([]).shape == (0, 64) and onnx.encode_pixels(pixels[:0]).shape == (0, 64)
    with pytest.raises(ValueError, match=r"expected pixels of shape \(N, 64, 64, 3\), got \(2, 32, 32, 3\)"):
        onnx.encode_pixels(np.zeros((2, 32, 32, 3), np.uint8))


def test_vit_b32_random_weights_onnx_vectors_match_pytorch(tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    folder = export_to_cache(CacheKey("test:ViT-B-32-random"), lambda: (model, tokenizer, cfg), tmp_path,
                             probe_images=2)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["verified"]["image_min_cosine"] >= 0.999 and meta["verified"]["text_min_cosine"] >= 0.999
    assert (meta["dim"], meta["image"]["size"], meta["text"]["context_length"], meta["text"]["cut"]) == (
        512, 224, 77, True)
    assert meta["text"]["inputs"] == ["embedded", "eot"]  # the token table is outside the graph ...
    assert np.load(folder / meta["text"]["token_table"], mmap_mode="r").shape == (49408, 512)  # ... beside it
    onnx = OnnxEncoder(folder)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
             ) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        want_img = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
        texts = ["a dog on a beach at sunset", "birthday cake"]
        want_txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()
    assert _cosines(onnx.encode_pixels(pixels), want_img).min() >= 0.999
    assert _cosines(onnx.encode_texts(texts), want_txt).min() >= 0.999


class _Perturbed(torch.nn.Module):
    """The tiny model behind ``encode_image``/``encode_text`` only, except that while being exported its
    image vectors are pushed off course (a graph that does not compute what PyTorch computes); with
    ``fail_text`` its text tower cannot be traced; with ``faithful`` it is exported as it is."""

    def __init__(self, model: torch.nn.Module, fail_text: type[BaseException] | None = None, faithful: bool = False):
        super().__init__()
        self.inner, self.fail_text, self.faithful = model, fail_text, faithful
        self.logit_scale = model.logit_scale

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner.encode_image(x)
        if torch.onnx.is_in_onnx_export() and self.fail_text is None and not self.faithful:
            out = out + 3 * out.flip(-1)
        return out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and self.fail_text is not None:
            raise self.fail_text("tracing broke here")
        return self.inner.encode_text(tokens)


def _tiny_parts(wrap=None):
    model, tokenizer, cfg = torch_parts(parse_model_spec(TINY_MODEL))
    return (wrap(model) if wrap else model), tokenizer, cfg


def _listing(root: Path) -> list[str]:
    """What the cache holds, less the per-model lock files (empty, kept: removing one while another
    process waits on it would let two exports run at once)."""
    return sorted(p.name for p in root.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock")))


def test_text_tower_that_cannot_be_cut_is_exported_whole(tmp_path, encoder):
    """A text tower clipdex does not recognise as CLIP's causal one runs at full context length."""
    folder = export_to_cache(CacheKey("test:opaque"), lambda: _tiny_parts(lambda m: _Perturbed(m, faithful=True)),
                             tmp_path)
    onnx = OnnxEncoder(folder)
    assert onnx.meta["text"]["cut"] is False
    texts = _varied_strings(20, seed=5)
    assert _cosines(onnx.encode_texts(texts), encoder.encode_texts(texts)).min() >= 0.999


def test_export_that_disagrees_with_pytorch_is_refused_and_remembered(tmp_path, encoder):
    key = CacheKey("test:perturbed")
    with pytest.raises(BackendUnavailable) as err:
        export_to_cache(key, lambda: _tiny_parts(_Perturbed), tmp_path)
    message = str(err.value)
    assert message.startswith("ONNX backend unavailable for test:perturbed: its image vectors from ONNX Runtime "
                              "differ from PyTorch's (lowest cosine ")
    assert message.endswith(", needs 0.999)")
    assert find(key, tmp_path) is None
    assert _listing(tmp_path) == [f"{key.name}.refused.json"]  # nothing else: no folder, no temporary left
    remembered = f" (remembered in {key.refusal_file(tmp_path)}: delete it to try again)"
    assert refusal(key, tmp_path) == err.value.reason + remembered

    def must_not_load():
        raise AssertionError("a refused model must not be exported again")

    for attempt in (lambda: export_to_cache(key, must_not_load, tmp_path),
                    lambda: OnnxEncoder.from_key(key, tmp_path)):
        with pytest.raises(BackendUnavailable) as again:
            attempt()
        assert str(again.value) == message + remembered


def test_export_failing_midway_leaves_no_partial_folder(tmp_path, encoder):
    """The image graph is written, then the text tower fails: the cache shows nothing but the refusal."""
    key = CacheKey("test:untraceable")
    with pytest.raises(BackendUnavailable) as err:
        export_to_cache(key, lambda: _tiny_parts(lambda m: _Perturbed(m, fail_text=RuntimeError)), tmp_path)
    assert str(err.value) == ("ONNX backend unavailable for test:untraceable: export to ONNX failed "
                              "(RuntimeError: tracing broke here)")
    assert _listing(tmp_path) == [f"{key.name}.refused.json"]
    # interrupted (not a property of the model): nothing is left and nothing is remembered
    key2 = CacheKey("test:interrupted")
    with pytest.raises(KeyboardInterrupt):
        export_to_cache(key2, lambda: _tiny_parts(lambda m: _Perturbed(m, fail_text=KeyboardInterrupt)), tmp_path)
    assert _listing(tmp_path) == [f"{key.name}.refused.json"]
    assert refusal(key2, tmp_path) is None


def test_export_killed_midway_is_invisible_and_cleaned_up_next_time(tmp_path, encoder):
    """A process killed during an export leaves only a temporary folder, which lookups ignore and the
    next export removes."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom clipdex.onnx.cache import CacheKey\n"
        "from clipdex.onnx.export import export_to_cache\n"
        "def load():\n    print('loading', flush=True)\n    sys.stdin.read()\n"
        f"export_to_cache(CacheKey('test:killed'), load, Path({str(tmp_path)!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "loading\n"
    finally:
        proc.kill()
        proc.wait()
    (left,) = _listing(tmp_path)
    assert left.startswith(".tmp-") and find(CacheKey("test:killed"), tmp_path) is None
    export_to_cache(CacheKey("test:other"), lambda: _tiny_parts(), tmp_path)
    assert _listing(tmp_path) == [CacheKey("test:other").name]


def test_cache_key_covers_model_weights_settings_and_versions(tmp_path, tiny_cache, encoder):
    spec = parse_model_spec(TINY_MODEL)
    key = key_for_spec(spec)
    assert find(key, tiny_cache) is not None
    assert export_to_cache(key, lambda: pytest.fail("cached: no export"), tiny_cache) == key.folder(tiny_cache)
    changed = [
        CacheKey("clipdex:other-model", key.settings, key.weights),
        CacheKey(key.identity, ExportSettings(opset=18), key.weights),
        CacheKey(key.identity, ExportSettings(pixels="float-nchw"), key.weights),
        CacheKey(key.identity, ExportSettings(precision="int8"), key.weights),
        CacheKey(key.identity, key.settings, key.weights[:-1]),
        CacheKey(key.identity, key.settings, key.weights, {**installed_versions(), "onnxruntime": "0.0"}),
        CacheKey(key.identity, key.settings, key.weights, {**installed_versions(), "torch": "0.0"}),
    ]
    assert len({k.digest for k in changed} | {key.digest}) == len(changed) + 1
    assert all(find(k, tiny_cache) is None for k in changed)

    # new weights in a model folder (same name, new mtime): a new key, exported afresh
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), folder)
    local = parse_model_spec(f"local-dir:{folder}")
    first = export_to_cache(key_for_spec(local), lambda: torch_parts(local), tmp_path / "cache")
    weights = folder / "open_clip_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
    assert find(key_for_spec(local), tmp_path / "cache") is None
    second = export_to_cache(key_for_spec(local), lambda: torch_parts(local), tmp_path / "cache")
    assert second != first and find(key_for_spec(local), tmp_path / "cache") == second

    # a folder whose stored key does not match its name (damaged or tampered) is not used, and is replaced
    meta = json.loads((second / "meta.json").read_text())
    meta["key"]["identity"] = "something else"
    (second / "meta.json").write_text(json.dumps(meta))
    assert find(key_for_spec(local), tmp_path / "cache") is None
    assert export_to_cache(key_for_spec(local), lambda: torch_parts(local), tmp_path / "cache") == second
    assert find(key_for_spec(local), tmp_path / "cache") == second


def test_unsupported_tokenizer_is_refused_with_its_reason():
    from clipdex.onnx.export import tokenizer_config

    class HFTokenizer:  # what open_clip builds for hf-hub models such as SigLIP
        pass

    with pytest.raises(BackendUnavailable) as err:
        tokenizer_config(HFTokenizer(), "hf-hub:timm/ViT-B-16-SigLIP")
    assert str(err.value) == ("ONNX backend unavailable for hf-hub:timm/ViT-B-16-SigLIP: its tokenizer is HFTokenizer, "
                              "not CLIP's BPE tokenizer, and the ONNX path runs only CLIP's BPE tokenizer")


def test_missing_export_is_reported_not_exported(tmp_path):
    with pytest.raises(BackendUnavailable) as err:
        OnnxEncoder.from_cache(parse_model_spec(TINY_MODEL), root=tmp_path)
    assert str(err.value) == f"ONNX backend unavailable for clipdex:tiny-shapes: not exported yet (cache {tmp_path})"


def test_runtime_encodes_without_importing_torch_or_open_clip(tiny_cache, encoder):
    script = (
        "import json, sys\nimport numpy as np\n"
        "from clipdex.models import parse_model_spec\nfrom clipdex.onnx.runtime import OnnxEncoder\n"
        "enc = OnnxEncoder.from_cache(parse_model_spec('tiny'))\n"
        "vec = enc.encode_texts(['a red circle'])[0]\n"
        "img = enc.encode_pixels(np.zeros((1, enc.image_size, enc.image_size, 3), np.uint8))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision'))\n"
        "print(json.dumps({'heavy': heavy, 'vec': vec.tolist(), 'img': img.shape[1]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, CACHE_ENV: str(tiny_cache)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["heavy"] == [] and result["img"] == 64
    assert float(np.dot(result["vec"], encoder.encode_texts(["a red circle"])[0])) >= 0.999
