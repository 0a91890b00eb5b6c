"""Local vs Ray-local indexing throughput on the same pictures: what ``--ray`` costs on one machine.

    python benchmarks/bench_ray.py [--images 300] [--size 1600x1200] [--models tiny,ViT-B-32] [--rounds 2]

For each model, a fresh library is indexed from the same generated photo-like JPEGs twice per
round, interleaved: the local way (``Indexer`` with its decode pool) and through a Ray instance
started here (``Indexer(..., ray=RayOptions())``: Ray Data CPU tasks decode, one encoder actor).
Ray's start (``ray.init``, ~5-10 s) is paid once per process and printed apart; the ratio is
the best decode+encode time (what the progress bar measures, the encoder actor's start and its
model load included) of each path. ``ViT-B-32`` has random weights (no download here; speed does
not depend on them), exported to ONNX once before any timing.

Also printed, for ``docs/scaling.md``: single-core decode cost per picture, and how many
pictures a second the driver commits through the store path alone (SQLite, 512-d vectors).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: (time, pictures) of each batch committed by the run being measured
COMMITS: list[tuple[float, int]] = []


def timed_commits() -> None:
    """Note when each batch is committed (``writes.store_batch``, the one store path of both ways)."""
    from clipdex.library import writes

    store = writes.store_batch

    def noted(lib, pictures, failures, forget_ids):
        ids = store(lib, pictures, failures, forget_ids)
        COMMITS.append((time.perf_counter(), len(pictures)))
        return ids

    writes.store_batch = noted


def blank_decode(path: str, size: int, mode: str, max_pixels: int):
    """A decoder that reads nothing: black pixels, a hash of the path (every file distinct, none a copy)."""
    import hashlib

    from clipdex.decoding import Decoded

    digest = hashlib.sha256(path.encode()).hexdigest()
    return Decoded(path, np.zeros((size, size, 3), np.uint8), 1600, 1200, None, digest)


def index_once(files_root: Path, spec: str, work: Path, name: str, ray_options=None, decode_fn=None) -> dict:
    """A first index into a fresh library: its decode+encode seconds (the bar's), whole run seconds,
    the seconds until the first batch was committed, and the rate after it (pictures/s)."""
    from clipdex.indexer import Indexer
    from clipdex.library import Library

    lib = Library.create(work / name)
    COMMITS.clear()
    start = time.perf_counter()
    extra = {"decode_fn": decode_fn} if decode_fn else {}
    stats = Indexer(lib, spec, batch_size=32, ray=ray_options, **extra).run([str(files_root)])
    assert stats.indexed == len(list(files_root.glob("*.jpg"))) and stats.skipped == 0, stats.summary()
    (first, _), (last, _) = COMMITS[0], COMMITS[-1]
    after = sum(n for _, n in COMMITS[1:])
    return {"work": stats.encode_seconds, "whole": stats.seconds, "first": first - start,
            "steady": after / (last - first) if last > first else float("nan")}


def commit_rate(work: Path, n: int = 20_000, dim: int = 512, batch: int = 256) -> float:
    """Pictures per second that ``writes.store_batch`` commits (one transaction per ``batch``), no model."""
    from clipdex.library import Library, writes
    from clipdex.library.writes import Picture
    from clipdex.models import parse_model_spec

    lib = Library.create(work / "commit")
    with lib.session() as s:
        lib.bind_model(s, parse_model_spec("ViT-B-32:random"), dim)
        s.commit()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((batch, dim)).astype(np.float32)
    start = time.perf_counter()
    for first in range(0, n, batch):
        pictures = [Picture(f"/archive/{i:08d}.jpg", 1_000_000, 1.7e9, f"{i:064x}", 1600, 1200, None,
                            vectors[i - first]) for i in range(first, min(n, first + batch))]
        writes.store_batch(lib, pictures, [], [])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", default="1600x1200")
    parser.add_argument("--models", default="tiny,ViT-B-32", help="tiny and/or an open_clip architecture")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_index import decode_cost, generate, make_model

    tmp = Path(tempfile.mkdtemp(prefix="clipdex-bench-ray-"))
    os.environ.setdefault("CLIPDEX_ONNX_CACHE", str(tmp / "onnx"))  # exports of random-weight models stay here
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    w, h = (int(x) for x in args.size.split("x"))
    files = generate(tmp / "pics", args.images, (w, h))
    print(f"decode cost: {decode_cost(files[:40], 224):.1f} ms per picture on one core "
          f"(read, hash, reduced-size JPEG decode, resize to 224)", flush=True)
    print(f"driver commit rate (SQLite store_batch, 512-d vectors, 256 a transaction): "
          f"{commit_rate(tmp):,.0f} pictures/s", flush=True)

    from clipdex.indexer.distributed import RayOptions, import_ray
    from clipdex.models import Encoder

    specs = {}
    for model in args.models.split(","):
        if model == "tiny":
            specs[model] = "tiny"
        else:
            folder = tmp / model
            folder.mkdir()
            specs[model] = make_model(folder, model)
        t0 = time.perf_counter()
        Encoder(specs[model], bulk=True).load()  # exported to ONNX once, outside every timing
        print(f"{model}: model ready in {time.perf_counter() - t0:.1f}s", flush=True)

    timed_commits()
    # The blank decoder goes to the decode worker processes by name: they import it from this folder.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                              os.environ.get("PYTHONPATH")]))
    from bench_ray import blank_decode as importable_blank
    ray = import_ray()
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    print(f"ray.init (a local Ray, {os.cpu_count()} CPUs): {time.perf_counter() - t0:.1f}s, paid once", flush=True)
    # The plumbing alone: no file read or decoded, the tiny model (~1 ms a picture): what each way costs a picture
    for r in range(args.rounds):
        got = {how: index_once(tmp / "pics", "tiny", tmp, f"blank-{how}-{r}", RayOptions() if how == "ray" else None,
                               importable_blank) for how in ("local", "ray")}
        print("  no decoding, tiny model, round {}: {}".format(r + 1, "; ".join(
            f"{how} {1000 * g['work'] / args.images:.1f} ms a picture over the whole decode+encode, of which "
            f"{g['first']:.1f}s before the first commit" for how, g in got.items())), flush=True)
    for model, spec in specs.items():
        runs: dict[str, list[dict]] = {"local": [], "ray": []}
        for r in range(args.rounds):
            for how in ("local", "ray"):
                got = index_once(tmp / "pics", spec, tmp, f"{model}-{how}-{r}", RayOptions() if how == "ray" else None)
                print(f"  {model} round {r + 1} {how:5s}: {args.images / got['work']:6.1f} images/s over "
                      f"{got['work']:.1f}s decode+encode ({got['whole']:.1f}s whole run); first batch committed "
                      f"after {got['first']:.1f}s, then {got['steady']:.1f} images/s", flush=True)
                runs[how].append(got)
        local = min(runs["local"], key=lambda g: g["work"])
        via_ray = min(runs["ray"], key=lambda g: g["work"])
        steady_local, steady_ray = local["steady"], via_ray["steady"]
        print(f"{model} (best of {args.rounds}): local {args.images / local['work']:.1f} images/s, Ray-local "
              f"{args.images / via_ray['work']:.1f} images/s over the whole decode+encode: Ray's overhead "
              f"{100 * (via_ray['work'] / local['work'] - 1):+.0f} % (target <= 20 %); first batch committed after "
              f"{local['first']:.1f}s vs {via_ray['first']:.1f}s; after it {steady_local:.1f} vs {steady_ray:.1f} "
              "images/s (Ray's rate is bursty: a block of up to 128 pictures comes back at once)", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
