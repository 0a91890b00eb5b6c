"""clipdex against its peers, side by side in one run: same generated pictures, same model weights.

    .venv/bin/python benchmarks/peers.py [--big 150] [--medium 300] [--add 20] [--rounds 3]
        [--clipdex-backends onnx,torch] [--peers rclip,clip-retrieval] [--keep DIR] [--json]

Quick check: ``--big 6 --medium 12 --rounds 1``. Generating 150 x 12 MP pictures takes minutes:
``--keep DIR`` keeps pictures, model and exports in DIR for the next run.

Work items, each run as a whole new process (the command a user types) and timed by wall clock,
median of ``--rounds`` interleaved rounds (each round runs every tool's step before the next step):

1. first index of ``--big`` 12 MP photo-like JPEGs (``photo_like()`` of bench_index.py) into an empty library;
2. first index of ``--medium`` 1600x1200 JPEGs into an empty library (each tool gets its own
   hard-linked copy of the folder);
3. ``--add`` new 1600x1200 pictures copied into that folder, then the tool's index command again;
4. the index command once more over the unchanged folder;
5. one text search ("a red car") from the CLI in a new process, on the library of 2-4;
6. peak memory of 1 and 2: the largest sum, over the tool's process tree (decoder and loader
   processes included), of each process's PSS (proportional set size: a page shared by N processes
   counts 1/N in each, so forked workers are not counted twice), from /proc/PID/smaps_rollup sampled
   every 0.05 s for the first 2 s, then every 0.2 s. The JSON also has the summed RSS, the largest
   single process's max RSS (wait4).
7. CPU seconds (user + system) of 1-5, the process and every descendant it waited for (wait4): steadier
   than wall time when something else shares the machine (the load average is printed).

Ratios are clipdex / peer, for time, memory and CPU time: above 1, clipdex is slower (or bigger).

Tools:

- clipdex: ``clipdex index FOLDER --library LIB --model local-dir:MODEL --backend B`` and
  ``clipdex search "a red car" --library LIB --backend B``, once per ``--clipdex-backends`` entry
  (only the default when the installed CLI has no ``--backend``). ONNX exports go to a cache inside
  the work folder (``CLIPDEX_ONNX_CACHE``), warmed before any timing; the one-time export cost is
  reported apart: a 1-picture index with an empty cache minus the same with the cache warm.
- rclip 4 (ONNX Runtime, no torch; needs Python 3.12/3.13, which is why a 3.11 venv only gets 3.3.0)
  in its own venv under ``--peers-dir``. rclip has no index-only command: ``rclip -f "a red car"``
  in the folder indexes it and then answers the query, so its rows 1-4 include one query; row 5 is
  ``rclip -n -f "a red car"`` (no indexing). rclip looks for ``$RCLIP_DATADIR/<MODEL_SUBDIR>/visual.onnx``
  and ``textual.onnx`` (input "input": float32 N x 3 x 256 x 256 already normalised by its own
  numpy preprocessing / int64 N x 77 tokens; L2 normalisation is done outside the graph),
  ``$RCLIP_DATADIR/tokenizer/bpe_simple_vocab_16e6.txt.gz`` and four legal text files, else downloads
  them from the Hugging Face hub. This harness writes those files from clipdex's model with
  ``torch.onnx.export`` (names and sizes read from the installed rclip) and gives every run a fresh
  ``RCLIP_DATADIR`` linking to them (the database lives there too), with ``HF_HUB_OFFLINE=1``.
  rclip's own model is ViT-B-32-256; with ``--rclip-graph crop`` (default) the graph takes rclip's
  256 x 256 input and runs clipdex's exact ViT-B-32 tower on its central 224 x 224 (a slice: the
  same tower cost as clipdex); ``--rclip-graph native`` instead interpolates the positional
  embedding to the 8 x 8 grid and runs all 65 tokens, as rclip's shipped model does (~1.3x the
  image-tower work).
- clip-retrieval 2.45.0 (``clip-retrieval inference``, torch + open_clip) in its own Python 3.11
  venv, torch pinned to the local 2.14.1 wheel with ``pip -c``, ``setuptools<81`` (its ``clip``
  dependency imports ``pkg_resources``). Its model is ``open_clip:ViT-B-32/<the same safetensors>``,
  ``--batch_size 32`` (clipdex's default; its own 256 is meant for a GPU) and
  ``--num_prepro_workers`` = CPU count (clipdex's default decoder count). It only computes
  embeddings (no searchable index, no incremental mode, search only through its server), so its
  rows 3-5 are n/a.

The model is a ViT-B-32 with random weights (``make_model()`` of bench_index.py; no download is
possible here, and speed does not depend on the weights). Making it, exporting rclip's graphs,
installing the peers and generating pictures are all outside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_index import make_model, photo_like  # noqa: E402

QUERY = "a red car"
ARCH = "ViT-B-32"
BIG_SIZE = (4000, 3000)
MEDIUM_SIZE = (1600, 1200)
TORCH_PINS = "torch==2.14.1\ntorchvision==0.29.1\n"
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"
STEPS = ("index_big", "index_medium", "add", "rerun", "search")
MEMORY_STEPS = ("index_big", "index_medium")


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pictures

def _one_picture(args: tuple[str, int, tuple[int, int]]) -> None:
    path, seed, size = args
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.jpg")
    photo_like(tmp, np.random.default_rng(seed), size)
    os.replace(tmp, target)


def make_pictures(folder: Path, prefix: str, count: int, seed0: int, size: tuple[int, int]) -> list[Path]:
    """``count`` photo-like JPEGs named PREFIX_0000.jpg..., each from its own seed (so kept ones are reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{prefix}_{i:04d}.jpg" for i in range(count)]
    todo = [(str(f), seed0 + i, size) for i, f in enumerate(files) if not f.exists()]
    if todo:
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(_one_picture, todo, chunksize=1))
    return files


# ---------------------------------------------------------------- running and measuring one process

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        kids[int(stat.rsplit(")", 1)[1].split()[1])].append(int(name))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _pss_rss_kb(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


@dataclass
class Run:
    seconds: float
    rc: int
    peak_pss_mb: float
    peak_rss_sum_mb: float
    max_rss_one_mb: float
    cpu_seconds: float
    log: str
    stdout: str = ""
    timed_out: bool = False


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float, interval: float = 0.2) -> Run:
    """Run ``cmd`` in a new session, sampling its process tree's memory until it exits (every 50 ms
    for the first 2 s, so short runs get samples too, then every ``interval`` s)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path = log.with_suffix(".out")
    with open(out_path, "wb") as out, open(log, "wb") as err:
        err.write((" ".join(cmd) + "\n").encode())
        err.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        peak = {"pss": 0, "rss": 0}
        done = threading.Event()
        timed_out = threading.Event()

        def sample() -> None:
            while not done.wait(0.05 if time.perf_counter() - start < 2 else interval):
                pss = rss = 0
                for pid in _tree(proc.pid):
                    p, r = _pss_rss_kb(pid)
                    pss, rss = pss + p, rss + r
                peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
                if time.perf_counter() - start > timeout and not timed_out.is_set():
                    timed_out.set()
                    try:
                        os.killpg(proc.pid, 9)  # the session this run started, nothing else
                    except OSError:
                        pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    return Run(seconds=seconds, rc=proc.returncode, peak_pss_mb=peak["pss"] / 1024, peak_rss_sum_mb=peak["rss"] / 1024,
               max_rss_one_mb=usage.ru_maxrss / 1024, cpu_seconds=usage.ru_utime + usage.ru_stime, log=str(log),
               stdout=out_path.read_text(errors="replace"), timed_out=timed_out.is_set())


def last_line(path: str) -> str:
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


# ---------------------------------------------------------------- peers: venvs

def python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def find_python(lo: tuple[int, int], hi: tuple[int, int]) -> str | None:
    """An interpreter with lo <= version < hi: python3.X on PATH, pyenv's, then uv's."""
    candidates: list[str] = []
    for minor in range(hi[1] - 1, lo[1] - 1, -1):
        exe = shutil.which(f"python3.{minor}")
        if exe:
            candidates.append(exe)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += [str(p / "bin" / "python") for p in sorted(pyenv.iterdir(), reverse=True)]
    uv = shutil.which("uv")
    if uv:
        for minor in range(lo[1], hi[1]):
            try:
                found = subprocess.run([uv, "python", "find", f"3.{minor}"], capture_output=True, text=True,
                                       timeout=60).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                found = ""
            if found:
                candidates.append(found)
    for exe in candidates:
        v = python_version(exe)
        if v and lo <= v < hi:
            return exe
    return None


def pip_install(venv: Path, python: str, packages: list[str], constraints: Path, log: Path) -> tuple[bool, str]:
    if not (venv / "bin" / "python").exists():
        r = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
        if r.returncode:
            return False, f"venv failed: {(r.stderr.strip().splitlines() or [''])[-1]}"
    with open(log, "ab") as f:
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-c", str(constraints), *packages],
                           stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        return False, f"pip install failed (see {log}): {last_line(str(log))}"
    return True, ""


def dist_version(venv: Path, name: str) -> str | None:
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        f"import importlib.metadata as m; print(m.version({name!r}))"], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def has_torch(venv: Path) -> bool:
    return dist_version(venv, "torch") is not None


def setup_rclip(peers: Path, install: bool, notes: list[str]) -> tuple[Path | None, str]:
    """(venv, version) of rclip 4 in its own venv, else the newest rclip this machine can run."""
    constraints = peers / "torch-constraints.txt"
    venv = peers / "rclip-venv"
    version = dist_version(venv, "rclip") if (venv / "bin" / "rclip").exists() else None
    if version is None and install:
        py = find_python((3, 12), (3, 14))
        log = peers / "rclip-install.log"
        if py:
            say(f"installing rclip 4 into {venv} with {py} ...")
            ok, why = pip_install(venv, py, ["rclip>=4,<5"], constraints, log)
            if not ok:
                notes.append(f"rclip 4 could not be installed ({why}); falling back")
        else:
            notes.append("rclip 4 needs Python 3.12 or 3.13 and none was found (PATH, pyenv, uv): "
                         "falling back to the newest rclip this Python can install")
        version = dist_version(venv, "rclip") if (venv / "bin" / "rclip").exists() else None
        if version is None:
            shutil.rmtree(venv, ignore_errors=True)
            ok, why = pip_install(venv, sys.executable, ["rclip"], constraints, log)
            if not ok:
                return None, f"rclip could not be installed: {why}"
            version = dist_version(venv, "rclip")
    if version is None:
        return None, f"rclip is not installed in {venv} (run without --no-install)"
    if not version.startswith("4."):
        notes.append(f"rclip {version} is measured instead of rclip 4 (see above)")
    if has_torch(venv):
        notes.append("warning: rclip's venv holds torch")
    return venv, version


def setup_clip_retrieval(peers: Path, install: bool) -> tuple[Path | None, str]:
    constraints = peers / "torch-constraints.txt"
    venv = peers / "clip-retrieval-venv"
    exe = venv / "bin" / "clip-retrieval"
    if not exe.exists():
        if not install:
            return None, f"clip-retrieval is not installed in {venv} (run without --no-install)"
        say(f"installing {CLIP_RETRIEVAL} into {venv} (torch pinned to the local wheel) ...")
        ok, why = pip_install(venv, sys.executable, [CLIP_RETRIEVAL, "setuptools<81"], constraints,
                              peers / "clip-retrieval-install.log")
        if not ok:
            return None, why
    version = dist_version(venv, "clip-retrieval")
    torch_version = dist_version(venv, "torch")
    if torch_version and not torch_version.startswith("2.14.1"):
        return None, f"its venv holds torch {torch_version}, not the pinned 2.14.1"
    return venv, version or "?"


# ---------------------------------------------------------------- rclip's model files

RCLIP_LAYOUT = r"""
import importlib.metadata, json
import rclip.model_download as m
from rclip.utils import preprocess as p
print(json.dumps({"subdir": m.MODEL_SUBDIR, "visual": m.VISUAL_ONNX, "textual": m.TEXTUAL_ONNX,
                  "tokenizer": m.TOKENIZER_VOCAB, "legal": list(getattr(m, "MODEL_LEGAL_FILES", ())),
                  "image_size": p.IMAGE_SIZE, "mean": [float(x) for x in p.MEAN], "std": [float(x) for x in p.STD],
                  "version": importlib.metadata.version("rclip")}))
"""


def rclip_layout(venv: Path) -> dict:
    r = subprocess.run([str(venv / "bin" / "python"), "-c", RCLIP_LAYOUT], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cannot read rclip's model layout: {(r.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(r.stdout)


def export_rclip_model(model_dir: Path, layout: dict, out: Path, mode: str) -> float:
    """Write rclip's model files for clipdex's model into ``out``; returns seconds (0 when reused)."""
    stamp = {"mode": mode, "layout": layout, "model_mtime": (model_dir / "open_clip_model.safetensors").stat().st_mtime}
    stamp_file = out / "peers-stamp.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return 0.0
    started = time.perf_counter()
    import open_clip
    import torch
    from torch import nn

    shutil.rmtree(out, ignore_errors=True)
    (out / layout["subdir"]).mkdir(parents=True)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    size = int(layout["image_size"])
    own = model.visual.image_size
    own = int(own[0] if isinstance(own, (tuple, list)) else own)
    if mode == "native" or size < own:
        cfg = json.loads((model_dir / "open_clip_config.json").read_text())["model_cfg"]
        cfg["vision_cfg"]["image_size"] = size
        bigger = open_clip.model.CLIP(**cfg)
        state = model.state_dict()
        open_clip.model.resize_pos_embed(state, bigger)
        bigger.load_state_dict(state)
        image_model, crop = bigger.eval(), 0
    else:
        image_model, crop = model, (size - own) // 2

    class Visual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = image_model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if crop:
                x = x[:, :, crop:crop + own, crop:crop + own]
            return self.model.encode_image(x)

    class Textual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(tokens)

    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    mha = getattr(torch.backends, "mha", None)
    if mha is not None:
        mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX export
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Visual(), (torch.randn(2, 3, size, size),), str(out / layout["subdir"] / layout["visual"]),
                          input_names=["input"], output_names=["output"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
        torch.onnx.export(Textual(), (torch.randint(1, 49000, (2, 77)),),
                          str(out / layout["subdir"] / layout["textual"]), input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, opset_version=17, dynamo=False)
    vocab = out / layout["tokenizer"]
    vocab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
    for name in layout["legal"]:
        (out / name).write_text("Placeholder written by clipdex's benchmarks/peers.py: random ViT-B-32 weights.\n")
    # the graphs must give what the torch model gives on rclip's own input
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    got = ort.InferenceSession(str(out / layout["subdir"] / layout["visual"]),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = Visual()(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, atol=1e-3):
        raise RuntimeError("rclip's exported image graph disagrees with the torch model")
    stamp_file.write_text(json.dumps(stamp))
    return time.perf_counter() - started


def rclip_datadir(model_files: Path, target: Path) -> Path:
    """A fresh RCLIP_DATADIR (rclip keeps its database there) whose model files link to ``model_files``."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in model_files.iterdir():
        if entry.name != "peers-stamp.json":
            (target / entry.name).symlink_to(entry)
    return target


# ---------------------------------------------------------------- the tools

@dataclass
class Tool:
    name: str
    kind: str  # clipdex | rclip | clip-retrieval
    version: str
    backend: str | None = None
    exe: Path | None = None
    steps: tuple[str, ...] = STEPS
    na: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    work: Path
    model_dir: Path
    big: Path
    medium: Path
    extra: list[Path]
    n_big: int
    n_medium: int
    n_add: int
    onnx_cache: Path
    rclip_files: Path | None
    timeout: float
    workers: int


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra})
    return env


class Runner:
    """Builds each tool's command for a step, runs it and checks what it did."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx

    def folder(self, tool: Tool, rnd: int) -> Path:
        return self.ctx.work / "runs" / f"r{rnd}" / tool.name / "pictures"

    def state(self, tool: Tool, rnd: int, step: str) -> Path:
        which = "big" if step == "index_big" else "medium"
        return self.ctx.work / "runs" / f"r{rnd}" / tool.name / f"state-{which}"

    def prepare_round(self, tool: Tool, rnd: int) -> None:
        """Fresh libraries and a hard-linked copy of the medium folder for this tool and round."""
        root = self.ctx.work / "runs" / f"r{rnd}" / tool.name
        shutil.rmtree(root, ignore_errors=True)
        folder = self.folder(tool, rnd)
        folder.mkdir(parents=True)
        for f in sorted(self.ctx.medium.iterdir()):
            os.link(f, folder / f.name)

    def add_pictures(self, tool: Tool, rnd: int) -> None:
        for f in self.ctx.extra:
            shutil.copy2(f, self.folder(tool, rnd) / f.name)

    def command(self, tool: Tool, rnd: int, step: str) -> tuple[list[str], Path, dict[str, str]]:
        ctx, state = self.ctx, self.state(tool, rnd, step)
        folder = ctx.big if step == "index_big" else self.folder(tool, rnd)
        if tool.kind == "clipdex":
            backend = ["--backend", tool.backend] if tool.backend else []
            env = base_env(CLIPDEX_ONNX_CACHE=str(ctx.onnx_cache))
            env.pop("CLIPDEX_BACKEND", None)
            env.pop("CLIPDEX_LIBRARY", None)
            if step == "search":
                return [str(tool.exe), "search", QUERY, "--library", str(state), *backend], ctx.work, env
            return ([str(tool.exe), "index", str(folder), "--library", str(state), "--model",
                     f"local-dir:{ctx.model_dir}", *backend, "--json"], ctx.work, env)
        if tool.kind == "rclip":
            if not (state / "db.sqlite3").exists() and step in ("index_big", "index_medium"):
                rclip_datadir(ctx.rclip_files, state)
            env = base_env(RCLIP_DATADIR=str(state))
            flags = ["-n", "-f"] if step == "search" else ["-f"]
            return [str(tool.exe), *flags, QUERY], folder, env
        # clip-retrieval: embeddings of the folder into a fresh output folder
        shutil.rmtree(state, ignore_errors=True)
        env = base_env(WANDB_MODE="disabled", WANDB_DISABLED="true")
        return ([str(tool.exe), "inference", "--input_dataset", str(folder), "--output_folder", str(state),
                 "--clip_model", f"open_clip:{ARCH}/{ctx.model_dir / 'open_clip_model.safetensors'}",
                 "--batch_size", "32", "--num_prepro_workers", str(ctx.workers), "--enable_text", "False"],
                ctx.work, env)

    def expected(self, step: str) -> int:
        return {"index_big": self.ctx.n_big, "index_medium": self.ctx.n_medium, "add": self.ctx.n_add,
                "rerun": 0}.get(step, -1)

    def check(self, tool: Tool, rnd: int, step: str, r: Run) -> str | None:
        """None when the run did what the step asks, else what went wrong."""
        if r.timed_out:
            return f"timed out after {self.ctx.timeout:.0f}s"
        if r.rc != 0:
            return f"exit {r.rc}: {last_line(r.log)}"
        want = self.expected(step)
        state = self.state(tool, rnd, step)
        if tool.kind == "clipdex":
            if step == "search":
                return None if r.stdout.strip() else "no results printed"
            try:
                stats = json.loads(r.stdout)
            except ValueError:
                return "no JSON from clipdex index --json"
            got = stats.get("encoded", -1)
            return None if got == want else f"encoded {got}, expected {want}"
        if tool.kind == "rclip":
            if step == "search":
                return None if r.stdout.strip() else "no results printed"
            total = {"index_big": self.ctx.n_big, "index_medium": self.ctx.n_medium}.get(
                step, self.ctx.n_medium + self.ctx.n_add)
            with sqlite3.connect(state / "db.sqlite3") as con:
                got = con.execute("SELECT count(*) FROM images WHERE deleted IS NULL").fetchone()[0]
            return None if got == total else f"{got} pictures in its database, expected {total}"
        embs = list((state / "img_emb").glob("*.npy"))
        got = sum(np.load(p, mmap_mode="r").shape[0] for p in embs)
        return None if got == want else f"{got} embeddings, expected {want}"


# ---------------------------------------------------------------- clipdex's one-time export

def clipdex_supports_backend(exe: Path) -> bool:
    r = subprocess.run([str(exe), "index", "--help"], capture_output=True, text=True)
    return "--backend" in r.stdout


def warm_onnx_cache(exe: Path, ctx: Ctx, picture: Path) -> dict:
    """Export once into a scratch cache (timed: cold run minus warm run), keep it as the real cache."""
    warm = ctx.work / "warm"
    shutil.rmtree(warm, ignore_errors=True)
    (warm / "pictures").mkdir(parents=True)
    shutil.copy2(picture, warm / "pictures" / picture.name)
    scratch = ctx.work / "onnx-cache-probe"
    shutil.rmtree(scratch, ignore_errors=True)
    times = []
    for i in range(2):
        env = base_env(CLIPDEX_ONNX_CACHE=str(scratch))
        r = run([str(exe), "index", str(warm / "pictures"), "--library", str(warm / f"lib{i}"), "--model",
                 f"local-dir:{ctx.model_dir}", "--backend", "onnx"], cwd=ctx.work, env=env,
                log=warm / f"warm{i}.log", timeout=ctx.timeout)
        if r.rc != 0:
            return {"error": f"warm-up failed: {last_line(r.log)}"}
        times.append(r.seconds)
    ctx.onnx_cache.mkdir(parents=True, exist_ok=True)
    for entry in scratch.iterdir():  # what the timed runs need; an older entry of the same key is replaced
        target = ctx.onnx_cache / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(entry, target)
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(warm, ignore_errors=True)
    return {"cold_index_1_picture_s": round(times[0], 2), "warm_index_1_picture_s": round(times[1], 2),
            "export_s": round(times[0] - times[1], 2)}


# ---------------------------------------------------------------- report

def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} MB" if unit == "MB" else (f"{v:.2f} s" if v < 10 else f"{v:.1f} s")


def report(tools: list[Tool], results: dict, args: argparse.Namespace, setup: dict, notes: list[str]) -> dict:
    rows = [("index_big", f"1. first index, {args.big} x 12 MP", "s"),
            ("index_medium", f"2. first index, {args.medium} x 1600x1200", "s"),
            ("add", f"3. add {args.add} pictures", "s"),
            ("rerun", "4. re-run, nothing changed", "s"),
            ("search", "5. one text search, cold CLI", "s"),
            ("mem:index_big", "6a. peak memory, index 12 MP", "MB"),
            ("mem:index_medium", "6b. peak memory, index 1600x1200", "MB"),
            *((f"cpu:{step}", f"7.{i}. CPU time of {i}", "s") for i, step in enumerate(STEPS, 1))]
    medians: dict[str, dict[str, float | None]] = {}
    cells: dict[str, dict[str, str]] = {}
    for t in tools:
        medians[t.name], cells[t.name] = {}, {}
        for key, _, unit in rows:
            step = key.split(":")[-1]
            runs = [r for r in results[t.name].get(step, []) if r.get("ok")]
            if step in t.na:
                medians[t.name][key], cells[t.name][key] = None, "n/a"
                continue
            if not runs:
                errs = [r.get("error") for r in results[t.name].get(step, []) if r.get("error")]
                medians[t.name][key], cells[t.name][key] = None, ("failed" if errs else "-")
                continue
            what = {"mem": "peak_pss_mb", "cpu": "cpu_seconds"}.get(key.split(":")[0], "seconds")
            values = [r[what] for r in runs]
            med = statistics.median(values)
            medians[t.name][key] = med
            cells[t.name][key] = fmt(med, unit)
    clipdexes = [t for t in tools if t.kind == "clipdex"]
    peers = [t for t in tools if t.kind != "clipdex"]
    ratios: dict[str, dict[str, float | None]] = {}
    for c in clipdexes:
        for p in peers:
            name = f"{c.backend or 'clipdex'}/{p.name}"
            ratios[name] = {}
            for key, _, _ in rows:
                a, b = medians[c.name].get(key), medians[p.name].get(key)
                ratios[name][key] = round(a / b, 3) if a is not None and b else None
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"}
    out = {"settings": settings, "setup": setup, "notes": notes,
           "tools": {t.name: {"kind": t.kind, "version": t.version, "backend": t.backend, "n/a": t.na}
                     for t in tools},
           "medians": medians, "ratios_clipdex_over_peer": ratios, "runs": results}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    if args.json:
        print(json.dumps(out, indent=2))
        return out
    label_w = max(len(label) for _, label, _ in rows) + 2
    heads = [f"{t.name}" for t in tools]
    widths = [max(11, len(h) + 2) for h in heads]
    print()
    print(f"{args.rounds} round(s), median; {os.cpu_count()} CPUs; model {ARCH} (random weights), same for all; "
          f"load average {setup.get('load_average', '?')}")
    print("".ljust(label_w) + "".join(h.rjust(w) for h, w in zip(heads, widths)))
    for key, label, _ in rows:
        print(label.ljust(label_w) + "".join(cells[t.name][key].rjust(w) for t, w in zip(tools, widths)))
    if ratios:
        print()
        print("ratio = clipdex / peer (time; memory in 6; CPU time in 7): above 1 means clipdex is slower (bigger)")
        rheads = list(ratios)
        rwidths = [max(11, len(h) + 2) for h in rheads]
        print("".ljust(label_w) + "".join(h.rjust(w) for h, w in zip(rheads, rwidths)))
        for key, label, _ in rows:
            vals = [ratios[h][key] for h in rheads]
            print(label.ljust(label_w) + "".join(("-" if v is None else f"{v:.2f}").rjust(w)
                                                 for v, w in zip(vals, rwidths)))
    print()
    for t in tools:
        print(f"{t.name}: {t.kind} {t.version}" + (f", --backend {t.backend}" if t.backend else ""))
        if t.kind == "rclip":
            print("  rows 1-4 are `rclip -f QUERY` in the folder: its indexing plus one query (it has no index-only"
                  " command); row 5 is `rclip -n -f QUERY`")
        if t.kind == "clip-retrieval" and t.exe:
            print("  rows 1-2 are `clip-retrieval inference` (embeddings only, no search index), its model warm-up"
                  " included")
        for step, why in t.na.items():
            print(f"  {step}: n/a, {why}")
        for step in STEPS:
            for r in results[t.name].get(step, []):
                if r.get("error"):
                    print(f"  {step} round {r['round']}: {r['error']}")
    for k, v in setup.items():
        print(f"{k}: {v}")
    for n in notes:
        print(f"note: {n}")
    return out


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=150, help="12 MP pictures for item 1")
    ap.add_argument("--medium", type=int, default=300, help="1600x1200 pictures for item 2")
    ap.add_argument("--add", type=int, default=20, help="new 1600x1200 pictures for item 3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clipdex-backends", default="onnx,torch", help="comma-separated; empty: the CLI's default")
    ap.add_argument("--peers", default="rclip,clip-retrieval", help="comma-separated subset of rclip,clip-retrieval")
    ap.add_argument("--peers-dir", type=Path, default=HERE / ".peers", help="the peers' venvs (git-ignored)")
    ap.add_argument("--no-install", action="store_true", help="measure only peers already installed")
    ap.add_argument("--rclip-graph", choices=("crop", "native"), default="crop",
                    help="crop: clipdex's tower on the central 224 of rclip's 256 input; native: 256 input, "
                         "65 tokens, as rclip's own ViT-B-32-256")
    ap.add_argument("--keep", type=Path, help="work folder kept between runs (pictures, model, exports)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one process may take")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--json-out", type=Path, help="also write the JSON to this file")
    args = ap.parse_args()

    notes: list[str] = []
    setup: dict = {}
    tmp = None
    if args.keep:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="clipdex-peers-")
        work = Path(tmp.name)
    try:
        _main(args, work, notes, setup)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _main(args: argparse.Namespace, work: Path, notes: list[str], setup: dict) -> None:
    peers_dir = args.peers_dir.resolve()
    peers_dir.mkdir(parents=True, exist_ok=True)
    (peers_dir / "torch-constraints.txt").write_text(TORCH_PINS)
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]

    # pictures (outside every timing)
    t0 = time.perf_counter()
    pics = work / "pictures"
    big = make_pictures(pics / "big", "IMG", args.big, 100_000, BIG_SIZE)
    medium = make_pictures(pics / "medium", "DSC", args.medium, 200_000, MEDIUM_SIZE)
    extra = make_pictures(pics / "extra", "NEW", args.add, 300_000, MEDIUM_SIZE)
    warm_pic = make_pictures(pics / "warm", "WARM", 1, 400_000, MEDIUM_SIZE)[0]
    for folder, files in ((pics / "big", big), (pics / "medium", medium), (pics / "extra", extra)):
        for f in set(folder.iterdir()) - set(files):  # left over from a run with other counts
            f.unlink()
    mb = sum(f.stat().st_size for f in big) / 1e6
    setup["pictures"] = (f"{len(big)} x 12 MP ({mb:.0f} MB), {len(medium)} + {len(extra)} x 1600x1200, "
                         f"ready in {time.perf_counter() - t0:.0f} s")
    say(setup["pictures"])

    # model (outside every timing)
    model_dir = work / "model"
    if not (model_dir / "open_clip_config.json").exists():
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir()
        t0 = time.perf_counter()
        make_model(model_dir, ARCH)
        setup["model"] = f"{ARCH} random weights written in {time.perf_counter() - t0:.1f} s"
    else:
        setup["model"] = f"{ARCH} random weights reused from {model_dir}"

    ctx = Ctx(work=work, model_dir=model_dir, big=pics / "big", medium=pics / "medium", extra=extra,
              n_big=len(big), n_medium=len(medium), n_add=len(extra), onnx_cache=work / "onnx-cache",
              rclip_files=None, timeout=args.timeout, workers=os.cpu_count() or 1)

    tools: list[Tool] = []
    clipdex_exe = Path(sys.executable).parent / "clipdex"
    if not clipdex_exe.exists():
        clipdex_exe = Path(shutil.which("clipdex") or "clipdex")
    version = (subprocess.run([str(clipdex_exe), "--version"], capture_output=True, text=True).stdout.split()
               or ["?"])[-1]
    backends = [b.strip() for b in args.clipdex_backends.split(",") if b.strip()]
    if backends and not clipdex_supports_backend(clipdex_exe):
        notes.append(f"this clipdex has no --backend option: only its default was measured (asked: {backends})")
        backends = []
    for b in backends or [None]:
        tools.append(Tool(name=f"clipdex-{b}" if b else "clipdex", kind="clipdex", version=version, backend=b,
                          exe=clipdex_exe))
    if "onnx" in backends or "auto" in backends:
        say("warming clipdex's ONNX cache (one-time export) ...")
        setup["clipdex_onnx_export"] = warm_onnx_cache(clipdex_exe, ctx, warm_pic)

    if "rclip" in wanted:
        venv, version = setup_rclip(peers_dir, not args.no_install, notes)
        if venv is None:
            notes.append(f"rclip not measured: {version}")
        else:
            layout = rclip_layout(venv)
            ctx.rclip_files = work / f"rclip-model-{args.rclip_graph}"
            say(f"writing rclip {version}'s model files from clipdex's model ({args.rclip_graph}) ...")
            secs = export_rclip_model(model_dir, layout, ctx.rclip_files, args.rclip_graph)
            setup["rclip_model"] = (f"{layout['subdir']}/{layout['visual']} + {layout['textual']} "
                                    f"({layout['image_size']} px input, graph '{args.rclip_graph}') "
                                    + (f"exported in {secs:.1f} s" if secs else "reused"))
            tools.append(Tool(name="rclip", kind="rclip", version=version, exe=venv / "bin" / "rclip"))
    if "clip-retrieval" in wanted:
        venv, version = setup_clip_retrieval(peers_dir, not args.no_install)
        na = {"add": "no incremental mode (inference re-embeds the whole folder)",
              "rerun": "no incremental mode (inference re-embeds the whole folder)",
              "search": "no one-shot CLI search (only its HTTP back end or ClipClient)"}
        if venv is None:
            notes.append(f"clip-retrieval unavailable: {version}")
            tools.append(Tool(name="clip-retrieval", kind="clip-retrieval", version="-",
                              na={s: version for s in STEPS}))
        else:
            tools.append(Tool(name="clip-retrieval", kind="clip-retrieval", version=version,
                              exe=venv / "bin" / "clip-retrieval", na=na))

    runner = Runner(ctx)
    load_start = os.getloadavg()[0]
    results: dict[str, dict[str, list[dict]]] = {t.name: defaultdict(list) for t in tools}
    for rnd in range(args.rounds):
        order = tools[rnd % len(tools):] + tools[:rnd % len(tools)]  # who goes first changes each round
        broken: set[str] = set()
        for t in order:
            runner.prepare_round(t, rnd)
        for step in STEPS:
            if step == "add":
                for t in order:
                    if step not in t.na:
                        runner.add_pictures(t, rnd)
            for t in order:
                if step in t.na or (t.name in broken and step != "index_big"):
                    continue
                cmd, cwd, env = runner.command(t, rnd, step)
                log = work / "logs" / f"r{rnd}-{t.name}-{step}.log"
                r = run(cmd, cwd=cwd, env=env, log=log, timeout=args.timeout)
                err = runner.check(t, rnd, step, r)
                entry = {"round": rnd, "ok": err is None, "seconds": round(r.seconds, 3),
                         "cpu_seconds": round(r.cpu_seconds, 2), "peak_pss_mb": round(r.peak_pss_mb, 1),
                         "peak_rss_sum_mb": round(r.peak_rss_sum_mb, 1), "max_rss_one_mb": round(r.max_rss_one_mb, 1)}
                if err:
                    entry["error"] = err
                    if step != "index_big":
                        broken.add(t.name)
                results[t.name][step].append(entry)
                say(f"round {rnd + 1}/{args.rounds} {t.name:>16} {step:<13} {r.seconds:8.2f} s "
                    f"{r.peak_pss_mb:7.0f} MB" + (f"  ERROR {err}" if err else ""))
        if not args.keep:
            shutil.rmtree(work / "runs" / f"r{rnd}", ignore_errors=True)
    if args.keep:
        shutil.rmtree(work / "runs", ignore_errors=True)
    setup["load_average"] = f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    report(tools, {k: dict(v) for k, v in results.items()}, args, setup, notes)


if __name__ == "__main__":
    main()
