"""PyTorch vs ONNX Runtime on this CPU: model throughput, query latency, cold start, session settings.

    python benchmarks/bench_backends.py [--arch ViT-B-32] [--batch 32] [--rounds 5] [--cold 5] [--no-int8]

The model has the given architecture with random weights (no download is possible here; speed does
not depend on the weights), written to a temporary ``local-dir:`` folder and exported through the
real cache (``CLIPDEX_ONNX_CACHE`` points into the temporary folder). Every figure is the median of
interleaved rounds (this VM's speed drifts, and other work may share it); ``cpu`` columns are the
process's CPU seconds, less sensitive to a busy machine than wall time.

1. image tower: torch fp32 vs ONNX fp32 fed uint8 NHWC (normalised in the graph) vs float NCHW
   (layout change in numpy) vs ONNX int8 (dynamic quantisation of the image weights), batch ``--batch``;
2. text tower: ms per query at batch 1;
3. onnxruntime settings on the image tower (optimisation level, intra-op threads, spinning, I/O binding)
   and session creation time per level;
4. cold start: a new process that encodes one text (import + model/session + tokenise + run), torch vs ONNX;
5. the issue's quality bars for int8 (recall@10 against fp32, zero-shot decisions kept) on the tiny
   model's generated shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

QUERY = "a dog running on a beach at sunset"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_model(folder: Path, arch: str) -> str:
    """Random weights for ``arch`` in an open_clip model folder; returns its ``local-dir:`` spec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = open_clip.get_model_config(arch)
    model = open_clip.create_model(arch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call."""
    w, c = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - w, cpu_seconds() - c


def interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float, float]]:
    """(median wall, median CPU, best wall) per case over ``rounds`` rounds, the cases taking turns in each round."""
    for fn in cases.values():  # warm-up: first runs allocate and pick kernels
        fn()
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            runs[name].append(timed(fn))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v), min(w for w, _ in v))
            for k, v in runs.items()}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def export_variants(spec, int8: bool) -> dict[str, object]:
    """OnnxEncoders for each export variant (exported into the cache on first run); a refused variant
    maps to its reason."""
    from clipdex.onnx import BackendUnavailable
    from clipdex.onnx.cache import ExportSettings, key_for_spec
    from clipdex.onnx.export import export_to_cache, torch_parts
    from clipdex.onnx.runtime import OnnxEncoder

    variants = {"onnx fp32 uint8-nhwc": ExportSettings(), "onnx fp32 float-nchw": ExportSettings(pixels="float-nchw")}
    if int8:
        variants["onnx int8 image"] = ExportSettings(precision="int8")
    out: dict[str, object] = {}
    for name, settings in variants.items():
        started = time.perf_counter()
        try:
            out[name] = OnnxEncoder(export_to_cache(key_for_spec(spec, settings), lambda: torch_parts(spec)))
            meta = out[name].meta
            found, verified = time.perf_counter() - started, meta["verified"]
            print(f"  {name}: exported and verified in {meta['export_seconds']} s (ready in {found:.1f} s), min cosine "
                  f"image {verified['image_min_cosine']:.5f} text {verified['text_min_cosine']:.5f}", flush=True)
        except BackendUnavailable as exc:
            out[name] = exc.reason
            print(f"  {name}: refused: {exc.reason}", flush=True)
    return out


def session_sweep(folder: Path, pixels: np.ndarray, rounds: int) -> list[tuple[str, float, float, float]]:
    """Image-tower wall/CPU seconds per batch and session creation time for onnxruntime settings."""
    from clipdex.onnx.runtime import SessionOptions, make_session

    graph = folder / "image.onnx"
    configs = {
        "all, 2 threads, no spin": SessionOptions(threads=2),
        "all, 2 threads, spin": SessionOptions(threads=2, spinning=True),
        "all, 1 thread": SessionOptions(threads=1),
        "extended, 2 threads": SessionOptions(threads=2, optimization="extended"),
        "basic, 2 threads": SessionOptions(threads=2, optimization="basic"),
        "disable, 2 threads": SessionOptions(threads=2, optimization="disable"),
    }
    sessions, created = {}, {}
    for name, opts in configs.items():
        w, _ = timed(lambda o=opts, n=name: sessions.__setitem__(n, make_session(graph, o)))
        created[name] = w
    cases: dict[str, Callable[[], object]] = {
        name: (lambda s=s: s.run(None, {"pixels": pixels})) for name, s in sessions.items()}
    s = sessions["all, 2 threads, no spin"]

    def with_binding() -> None:
        io = s.io_binding()
        io.bind_cpu_input("pixels", pixels)
        io.bind_output("embedding")
        s.run_with_iobinding(io)
        io.copy_outputs_to_cpu()

    cases["all, 2 threads, I/O binding"] = with_binding
    created["all, 2 threads, I/O binding"] = created["all, 2 threads, no spin"]
    res = interleaved(cases, rounds)
    return [(name, res[name][0], res[name][1], created[name]) for name in cases]


COLD_ONNX = """
import json, sys, time
t0 = time.perf_counter()
from clipdex.models import parse_model_spec
from clipdex.onnx.runtime import OnnxEncoder
t1 = time.perf_counter()
enc = OnnxEncoder.from_cache(parse_model_spec(sys.argv[1]))
tok = enc.tokenizer
t2 = time.perf_counter()
enc.session("text")
t3 = time.perf_counter()
tokens = tok([sys.argv[2]])
t4 = time.perf_counter()
enc.encode_tokens(tokens)
t5 = time.perf_counter()
heavy = any(m.split(".")[0] in ("torch", "open_clip") for m in sys.modules)
print(json.dumps({"import": t1 - t0, "tokenizer": t2 - t1, "session": t3 - t2, "tokenise": t4 - t3,
                  "run": t5 - t4, "torch imported": heavy}))
"""
COLD_TORCH = """
import json, sys, time
t0 = time.perf_counter()
from clipdex.models import Encoder
enc = Encoder(sys.argv[1], device="cpu")
enc.load()
t1 = time.perf_counter()
enc.encode_texts([sys.argv[2]])
t2 = time.perf_counter()
print(json.dumps({"import+load": t1 - t0, "encode": t2 - t1}))
"""


def cold_starts(spec: str, runs: int) -> dict[str, dict[str, float]]:
    """Whole-process wall time (interpreter start to exit) of encoding one text, interleaved, median."""
    walls: dict[str, list[float]] = {"torch": [], "onnx": []}
    parts: dict[str, list[dict]] = {"torch": [], "onnx": []}
    for _ in range(runs):
        for name, script in (("torch", COLD_TORCH), ("onnx", COLD_ONNX)):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", script, spec, QUERY], capture_output=True, text=True,
                                 check=True)
            walls[name].append(time.perf_counter() - start)
            parts[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {}
    for name in walls:
        result[name] = {"process wall": statistics.median(walls[name])}
        for k, v in parts[name][0].items():
            values = [p[k] for p in parts[name]]
            result[name][k] = any(values) if isinstance(v, bool) else statistics.median(values)
    return result


def recall_at_10(base: np.ndarray, other: np.ndarray, q_base: np.ndarray, q_other: np.ndarray) -> float:
    """Mean share of each query's 10 nearest pictures under ``base`` vectors that ``other`` vectors also rank top 10."""
    top_base = np.argsort(-(q_base @ base.T), axis=1)[:, :10]
    top_other = np.argsort(-(q_other @ other.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_base, top_other)]))


def openvino_bf16(folder: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The exported image graph run by OpenVINO in bfloat16 (measured as the other lower precision this
    CPU supports, avx512_bf16: ~1.8x faster than fp32), or None when openvino is not installed (it is
    not a clipdex dependency: ``pip install openvino`` to measure it)."""
    try:
        import openvino
    except ImportError:
        print("  (openvino is not installed: bf16 not measured; pip install openvino to measure it)")
        return None
    model = openvino.Core().compile_model(str(folder / "image.onnx"), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    request = model.create_infer_request()

    def encode(pixels: np.ndarray) -> np.ndarray:
        out = np.concatenate([request.infer({0: pixels[i:i + 32]})[0].copy() for i in range(0, len(pixels), 32)])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return encode


def int8_quality(work: Path) -> None:
    """The issue's bars for lower precision, int8 image tower vs torch fp32, on the tiny model's generated
    shapes (24 classes x 20 pictures): recall@10 of text and picture queries, zero-shot decisions kept."""
    from clipdex.imaging import load_for_model
    from clipdex.models import TINY_MODEL, Encoder, parse_model_spec
    from clipdex.onnx.cache import ExportSettings, key_for_spec
    from clipdex.onnx.export import export_to_cache, torch_parts
    from clipdex.onnx.runtime import OnnxEncoder
    from clipdex.synthetic import all_samples, write_collection

    spec = parse_model_spec(TINY_MODEL)
    torch_enc = Encoder(spec, device="cpu", backend="torch").load()
    variants = {p: OnnxEncoder(export_to_cache(key_for_spec(spec, ExportSettings(precision=p)),
                                               lambda: torch_parts(spec), work / "cache")) for p in ("fp32", "int8")}
    files = write_collection(work / "shapes", per_class=20, seed=3)
    pixels = np.stack([load_for_model(f, torch_enc.image_size, torch_enc.resize_mode)[0] for f in files])
    texts = torch_enc.encode_texts([f"a {s.color} {s.shape}" for s in all_samples()])
    base = torch_enc.encode_pixels(pixels)
    print(f"\nlower precision, tiny model, {len(pixels)} generated pictures (bars: recall@10 >= 0.98, "
          "decisions kept >= 0.99)")
    encoders = {f"onnx {name}": enc.encode_pixels for name, enc in variants.items()}
    bf16 = openvino_bf16(variants["fp32"].folder)
    if bf16 is not None:
        encoders["openvino bf16"] = bf16
    for name, encode in encoders.items():
        vec = encode(pixels)
        kept = np.mean(np.argmax(base @ texts.T, 1) == np.argmax(vec @ texts.T, 1))
        print(f"  {name}: min cosine {cosines(vec, base).min():.5f}, recall@10 text queries "
              f"{recall_at_10(base, vec, texts, texts):.3f}, picture queries {recall_at_10(base, vec, base, vec):.3f}, "
              f"zero-shot decisions kept {kept:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=5, help="cold-start runs per backend")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--sweep-batch", type=int, default=8, help="batch for the session-settings sweep")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipdex-bench-backends-") as tmp:
        work = Path(tmp)
        os.environ["CLIPDEX_ONNX_CACHE"] = str(work / "cache")
        (work / "model").mkdir()
        import torch

        from clipdex.models import Encoder, parse_model_spec

        spec_text = make_model(work / "model", args.arch)
        spec = parse_model_spec(spec_text)
        encoder = Encoder(spec, device="cpu").load()
        print(f"{args.arch} random weights; {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        variants = export_variants(spec, not args.no_int8)
        onnx = {k: v for k, v in variants.items() if not isinstance(v, str)}

        size = encoder.image_size
        pixels = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
        want = encoder.encode_pixels(pixels)
        agreement = {name: float(cosines(enc.encode_pixels(pixels), want).min()) for name, enc in onnx.items()}
        image_cases = {"torch fp32": lambda: encoder.encode_pixels(pixels)}
        image_cases.update({name: (lambda e=enc: e.encode_pixels(pixels)) for name, enc in onnx.items()})
        images = interleaved(image_cases, args.rounds)

        fp32 = onnx["onnx fp32 uint8-nhwc"]
        tokens = fp32.tokenizer([QUERY])
        text_cases = {"torch fp32": lambda: encoder.encode_texts([QUERY]),
                      "onnx fp32": lambda: fp32.encode_texts([QUERY]),
                      "onnx fp32, tokens given": lambda: fp32.encode_tokens(tokens)}
        texts = interleaved(text_cases, args.rounds * 4)
        text_agree = float(cosines(fp32.encode_texts([QUERY]), encoder.encode_texts([QUERY]))[0])

        sweep = session_sweep(fp32.folder, pixels[:args.sweep_batch], args.rounds)
        cold = cold_starts(spec_text, args.cold)
        if "onnx int8 image" in onnx:  # the same bars on the benchmark's own (random) pictures
            vec = onnx["onnx int8 image"].encode_pixels(pixels)
            int8_recall = recall_at_10(want, vec, want, vec)

    print(f"\nimage tower, batch {args.batch} (median of {args.rounds})")
    print(f"  {'backend':24} {'images/s':>9} {'best':>6} {'core-ms/image':>14} {'min cos vs torch':>17}")
    for name, (w, c, best) in images.items():
        cos = "" if name == "torch fp32" else f"{agreement[name]:.5f}"
        print(f"  {name:24} {args.batch / w:9.1f} {args.batch / best:6.1f} {c / args.batch * 1000:14.0f} {cos:>17}")
    for name, reason in variants.items():
        if isinstance(reason, str):
            print(f"  {name:24} refused: {reason}")
    print(f"\ntext tower, one query (median of {args.rounds * 4})")
    for name, (w, c, best) in texts.items():
        print(f"  {name:24} {w * 1000:7.1f} ms  (best {best * 1000:6.1f} ms)  cpu {c * 1000:6.1f} ms")
    print(f"  cosine onnx vs torch: {text_agree:.6f}")
    print(f"\nonnxruntime settings, image tower fp32 uint8-nhwc, batch {args.sweep_batch} (median of {args.rounds})")
    print(f"  {'settings':30} {'images/s':>9} {'cpu s/batch':>12} {'session s':>10}")
    for name, w, c, created in sweep:
        print(f"  {name:30} {args.sweep_batch / w:9.1f} {c:12.2f} {created:10.2f}")
    print(f"\ncold start: one text query in a new process (median of {args.cold}, interleaved)")
    for name, parts in cold.items():
        detail = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in parts.items()
                           if k != "process wall")
        print(f"  {name:6} {parts['process wall']:6.2f} s   ({detail})")
    if "onnx int8 image" in onnx:
        print(f"\nint8 image tower on the {args.batch} benchmark pictures: recall@10 of picture queries "
              f"vs torch fp32 {int8_recall:.3f}")
    if not args.no_int8:
        with tempfile.TemporaryDirectory(prefix="clipdex-bench-int8-") as tmp:
            int8_quality(Path(tmp))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (other work on this machine inflates every figure)")


if __name__ == "__main__":
    main()
