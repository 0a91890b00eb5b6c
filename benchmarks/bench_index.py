"""Indexing throughput on photo-like JPEGs, side by side in one run, for each backend.

    python benchmarks/bench_index.py [--images 64] [--sizes 12mp,2mp] [--backends onnx,torch] [--arch ViT-B-32]

For each picture size (12 MP = 4000x3000, 2 MP = 1600x1200):
1. naive   - the classic CLIP tutorial loop: PIL open, open_clip's preprocess, encode one image at a time (PyTorch);
2. clipdex - ``Indexer.run`` on a fresh library (decode workers, draft decoding, batching, SQLite + FAISS),
             once per backend (``onnx``: ONNX Runtime on the exported model; ``torch``: PyTorch);
3. ceiling - the model alone on pre-decoded, pre-resized pixels, batched, per backend.
From the measured single-core decode cost and each backend's model core-ms, the physical bound: what
clipdex / ceiling cannot exceed with every core busy. Peers (rclip, clip-retrieval) are timed side by
side as whole processes in ``benchmarks/peers.py``.

The model has the given architecture with random weights (no download is possible here);
speed does not depend on the weights. It is written to a temporary ``local-dir:`` folder so
clipdex loads it through its real code path. Model loading is outside every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(path: Path, rng: np.random.Generator, size: tuple[int, int] = (4000, 3000)) -> None:
    """A 12 MP JPEG with smooth gradients, blobs and sensor-like noise (compresses like a photo)."""
    w, h = size
    small = rng.random((h // 100, w // 100, 3)) * 255
    im = Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16)
    arr = arr + rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_model(folder: Path, arch: str) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config(arch)
    model = open_clip.create_model(arch)
    save_file({k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


def naive(files: list[Path], spec: str) -> float:
    import open_clip
    import torch

    name = spec
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            x = preprocess(Image.open(f).convert("RGB")).unsqueeze(0)
            v = model.encode_image(x)
            v /= v.norm(dim=-1, keepdim=True)
    return time.perf_counter() - start


def clipdex_index(files: list[Path], encoder, workdir: Path, workers: int | None, batch: int) -> float:
    """Seconds for ``Indexer.run`` over ``files`` into a new library (the model already loaded)."""
    from clipdex.indexer import Indexer
    from clipdex.library import Library

    lib = Library.create(workdir / f"lib-{time.time_ns()}")
    start = time.perf_counter()
    stats = Indexer(lib, encoder, workers=workers, batch_size=batch, progress=False).run([str(files[0].parent)])
    took = time.perf_counter() - start
    assert stats.encoded == len(files), stats
    return took


def ceiling(files: list[Path], encoder, batch: int) -> float:
    """Seconds for the model alone on the pictures already decoded and resized."""
    from clipdex.imaging import load_for_model

    pixels = np.stack([load_for_model(f, encoder.image_size)[0] for f in files])
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        encoder.encode_pixels(pixels[i:i + batch])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--sizes", default="12mp,2mp", help="comma-separated: 12mp (4000x3000), 2mp (1600x1200)")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32, help="ceiling batch size")
    ap.add_argument("--clipdex-batch", type=int, default=32, help="clipdex --batch-size")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-naive", action="store_true", help="skip the (slow) naive loop")
    ap.add_argument("--rclip", action="store_true", help="also time clipdex and rclip 4 as whole processes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from clipdex.models import Encoder
    from clipdex.onnx.runtime import usable_cores

    threads = usable_cores()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sizes = {"12mp": (4000, 3000), "2mp": (1600, 1200)}
    reports = []
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-") as tmp:
        work = Path(tmp)
        os.environ["CLIPDEX_ONNX_CACHE"] = str(work / "onnx-cache")
        (work / "model").mkdir()
        spec = make_model(work / "model", args.arch)
        t0 = time.perf_counter()
        encoders = {b: Encoder(spec, backend=b).load() for b in backends}  # the ONNX export: once, untimed
        print(f"model ready in {time.perf_counter() - t0:.0f}s (including the one-time ONNX export)", flush=True)
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            files = generate(work / size, args.images, sizes[size])
            reports.append(measure(files, size, spec, encoders, work, threads, args))
            if args.rclip:
                reports[-1]["whole_processes"] = against_rclip(files, work, args.rounds)
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for report in reports:
        print_report(report)


def generate(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    files = []
    for i in range(n):
        files.append(folder / f"IMG_{i:04d}.jpg")
        photo_like(files[-1], rng, size)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"generated {n} {size[0]}x{size[1]} JPEGs ({mb:.0f} MB) in {time.perf_counter() - t0:.0f}s; "
          f"{os.cpu_count()} CPUs", flush=True)
    return files


def measure(files: list[Path], size: str, spec: str, encoders: dict, work: Path, threads: int,
            args: argparse.Namespace) -> dict:
    """Interleaved rounds of every way, best of each (this VM's speed drifts)."""
    results: dict[str, list[float]] = {}
    for encoder in encoders.values():
        ceiling(files[:4], encoder, args.batch)  # warm-up
    for _ in range(args.rounds):
        for name, encoder in encoders.items():
            results.setdefault(f"ceiling {name}", []).append(ceiling(files, encoder, args.batch))
            results.setdefault(f"clipdex {name}", []).append(
                clipdex_index(files, encoder, work, args.workers, args.clipdex_batch))
        if not args.no_naive:
            results.setdefault("naive", []).append(naive(files, spec))
    any_encoder = next(iter(encoders.values()))
    decode_ms = decode_cost(files[:8], any_encoder.image_size)
    rate = {k: len(files) / min(v) for k, v in results.items()}
    report = {"size": size, "images": len(files), "arch": args.arch, "rounds": args.rounds, "cores": threads,
              "images_per_second": {k: round(v, 2) for k, v in rate.items()},
              "seconds_each_round": {k: [round(x, 2) for x in v] for k, v in results.items()},
              "decode_core_ms_per_image": round(decode_ms, 1), "backends": {}}
    for name in encoders:
        model_ms = min(results[f"ceiling {name}"]) / len(files) * 1000 * threads
        report["backends"][name] = {
            "model_core_ms_per_image": round(model_ms, 1),
            "clipdex_vs_ceiling": round(rate[f"clipdex {name}"] / rate[f"ceiling {name}"], 3),
            "cpu_bound_on_clipdex_vs_ceiling": round(model_ms / (model_ms + decode_ms), 3),
            "clipdex_vs_naive": round(rate[f"clipdex {name}"] / rate["naive"], 2) if "naive" in rate else None,
        }
    if "onnx" in encoders and "torch" in encoders:
        report["clipdex_onnx_vs_torch"] = round(rate["clipdex onnx"] / rate["clipdex torch"], 2)
    return report


def print_report(report: dict) -> None:
    print(f"\n{report['images']} pictures of {report['size']}, {report['arch']}, {report['cores']} cores")
    for k, v in report["images_per_second"].items():
        rounds = ", ".join(f"{x:.1f}" for x in report["seconds_each_round"][k])
        print(f"{k:>16}: {v:7.2f} images/s  (best of {rounds} s)")
    for name, b in report["backends"].items():
        naive_ratio = f", clipdex / naive {b['clipdex_vs_naive']:.2f}" if b["clipdex_vs_naive"] else ""
        print(f"{name:>16}: model {b['model_core_ms_per_image']:.0f} core-ms/picture, decoding "
              f"{report['decode_core_ms_per_image']:.0f}; clipdex / ceiling {b['clipdex_vs_ceiling']:.2f} "
              f"(bound {b['cpu_bound_on_clipdex_vs_ceiling']:.2f}){naive_ratio}")
    if "clipdex_onnx_vs_torch" in report:
        print(f"{'':>16}  clipdex onnx / torch = {report['clipdex_onnx_vs_torch']:.2f}")
    whole = report.get("whole_processes")
    if whole and "error" in whole:
        print(f"{'':>16}  rclip not measured: {whole['error']}")
    elif whole:
        for tool in ("clipdex", "rclip"):
            print(f"{tool + ' (process)':>16}: {whole[tool]['images_per_second']:7.2f} images/s, peak memory "
                  f"{whole[tool]['peak_mb']:.0f} MB")
        print(f"{'':>16}  clipdex / rclip throughput = {whole['throughput_ratio']:.2f} (goal >= 1.3), "
              f"memory = {whole['memory_ratio']:.2f} (goal <= 1)")


def against_rclip(files: list[Path], work: Path, rounds: int) -> dict:
    """``clipdex index --backend onnx`` and ``rclip -f`` over ``files`` as whole processes, interleaved."""
    import statistics

    import peers

    notes: list[str] = []
    venv, version = peers.setup_rclip(Path(__file__).parent / ".peers", True, notes)
    if venv is None:
        return {"error": version}
    model_dir = work / "model"
    rclip_files = work / "rclip-model"
    if not rclip_files.exists():
        peers.export_rclip_model(model_dir, peers.rclip_layout(venv), rclip_files, "crop")
    clipdex = Path(sys.executable).with_name("clipdex")
    times: dict[str, list[float]] = {"clipdex": [], "rclip": []}
    peaks: dict[str, list[float]] = {"clipdex": [], "rclip": []}
    for i in range(rounds):
        lib, data = work / f"whole-lib-{files[0].parent.name}-{i}", work / f"rclip-data-{files[0].parent.name}-{i}"
        env = peers.base_env(CLIPDEX_ONNX_CACHE=os.environ["CLIPDEX_ONNX_CACHE"])
        r = peers.run([str(clipdex), "index", str(files[0].parent), "--library", str(lib), "--model",
                       f"local-dir:{model_dir}", "--backend", "onnx"], cwd=work, env=env,
                      log=work / f"clipdex-{i}.log", timeout=3600)
        times["clipdex"].append(r.seconds)
        peaks["clipdex"].append(r.peak_pss_mb)
        peers.rclip_datadir(rclip_files, data)
        r = peers.run([str(venv / "bin" / "rclip"), "-f", "a red car"], cwd=files[0].parent,
                      env=peers.base_env(RCLIP_DATADIR=str(data)), log=work / f"rclip-{i}.log", timeout=3600)
        times["rclip"].append(r.seconds)
        peaks["rclip"].append(r.peak_pss_mb)
    out = {tool: {"images_per_second": round(len(files) / statistics.median(times[tool]), 2),
                  "seconds_each_round": [round(t, 2) for t in times[tool]],
                  "peak_mb": round(max(peaks[tool]), 1)} for tool in times}
    out["rclip_version"] = version
    out["throughput_ratio"] = round(out["clipdex"]["images_per_second"] / out["rclip"]["images_per_second"], 2)
    out["memory_ratio"] = round(out["clipdex"]["peak_mb"] / out["rclip"]["peak_mb"], 2)
    return out


def decode_cost(files: list[Path], size: int) -> float:
    """Single-core milliseconds to read, hash and decode one picture (best of 3 passes)."""
    from clipdex.decoding import decode_file
    from clipdex.imaging import DEFAULT_MAX_PIXELS

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for f in files:
            decode_file(str(f), size, "shortest", DEFAULT_MAX_PIXELS)
        best = min(best, (time.perf_counter() - start) / len(files) * 1000)
    return best


if __name__ == "__main__":
    main()
