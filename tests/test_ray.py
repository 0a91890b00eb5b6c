"""``clipdex index --ray``: decoding and encoding on a real (local) Ray cluster, storing as a local run does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[test,ray]')")

from clipdex.errors import ClipdexError  # noqa: E402
from clipdex.indexer import Indexer  # noqa: E402
from clipdex.indexer.distributed import RayOptions, worker_env  # noqa: E402
from clipdex.library import Library  # noqa: E402
from clipdex.models import TINY_MODEL  # noqa: E402
from clipdex.synthetic import write_collection  # noqa: E402
from tests.conftest import invoke, run_cli  # noqa: E402
from tests.faulty import hang_or_crash  # noqa: E402
from tests.test_bad_files import EXPECTED, messy  # noqa: E402,F401 - the fixture is used below

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """A real Ray instance with 2 CPUs for this module; ``--ray auto`` in a subprocess joins it."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), before]))  # workers import tests.faulty
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pics")
    write_collection(folder, per_class=2, seed=3)  # 48 pictures
    return folder


@pytest.fixture(scope="module")
def local_vectors(tmp_path_factory, pics) -> dict[str, np.ndarray]:
    """The same pictures indexed the local way: path -> vector."""
    lib = Library.create(tmp_path_factory.mktemp("local"))
    Indexer(lib, TINY_MODEL, workers=2).run([str(pics)])
    return vectors_by_path(lib)


def rows(lib: Library) -> list[tuple[int, str, str, int, int]]:
    with sqlite3.connect(lib.path / "clipdex.db") as conn:
        return conn.execute("select id, path, content_hash, width, height from images order by path").fetchall()


def vectors_by_path(lib: Library) -> dict[str, np.ndarray]:
    ids, vectors = lib.load_vectors()
    by_id = dict(zip(ids.tolist(), vectors))
    return {path: by_id[i] for i, path, *_ in rows(lib)}


def assert_same_vectors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    cosines = [float(np.dot(got[p], want[p]) / np.linalg.norm(got[p]) / np.linalg.norm(want[p])) for p in want]
    assert min(cosines) >= 0.9999, min(cosines)


def test_same_library_as_a_local_run_and_a_rerun_encodes_nothing(cluster, tmp_path, pics, local_vectors):
    lib = Library.create(tmp_path / "lib")
    said: list[str] = []
    stats = Indexer(lib, TINY_MODEL, batch_size=8, say=said.append, ray=RayOptions()).run([str(pics)])
    assert (stats.indexed, stats.encoded, stats.skipped) == (len(local_vectors), len(local_vectors), 0)
    assert any(line.startswith("encoding 48 pictures on Ray: 1 encoder actor") for line in said), said
    assert_same_vectors(vectors_by_path(lib), local_vectors)
    assert sorted(lib.index().ids().tolist()) == sorted(i for i, *_ in rows(lib))  # FAISS agrees with the database

    again = Indexer(lib, TINY_MODEL, ray=RayOptions()).run([str(pics)])
    assert (again.encoded, again.indexed, again.unchanged) == (0, 0, len(local_vectors))

    rebuilt = Indexer(lib, TINY_MODEL, ray=RayOptions()).run([str(pics)], rebuild=True)  # the staged path too
    assert rebuilt.rebuilt and rebuilt.encoded == len(local_vectors)
    assert_same_vectors(vectors_by_path(lib), local_vectors)


def test_bad_files_are_skipped_with_the_local_reasons(cluster, tmp_path, messy):  # noqa: F811
    local = Library.create(tmp_path / "local")
    Indexer(local, TINY_MODEL, timeout=2, decode_fn=hang_or_crash).run([str(messy)])
    lib = Library.create(tmp_path / "lib")
    stats = Indexer(lib, TINY_MODEL, timeout=2, decode_fn=hang_or_crash, ray=RayOptions()).run([str(messy)])
    assert stats.indexed == 3 and stats.skipped == len(EXPECTED)
    reasons = {Path(p).name: r for p, r in lib.skipped()}
    assert reasons == {Path(p).name: r for p, r in local.skipped()}  # a crash and a time-out included
    assert set(reasons) == set(EXPECTED)
    for name, reason in EXPECTED.items():
        assert reasons[name].startswith(reason), (name, reasons[name])


def kill_worker_once(path: str, size: int, mode: str, max_pixels: int):
    """The real decoder, except that the first time it sees ``die.jpg`` it kills the Ray worker running its
    task (the parent of the forkserver this decoder was forked from): a node process lost mid-task."""
    from clipdex.decoding import decode_file

    marker = Path(path).parent.parent / "worker-killed"
    if Path(path).name == "die.jpg":
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            with open(f"/proc/{os.getppid()}/stat") as fh:
                ray_worker = int(fh.read().rsplit(")", 1)[1].split()[1])
            os.kill(ray_worker, signal.SIGKILL)
            time.sleep(5)  # never returns to the dead worker; exits on its own
    return decode_file(path, size, mode, max_pixels)


def test_a_worker_killed_mid_task_costs_a_retry_not_the_run(cluster, tmp_path):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4)
    shutil.copy(next(pics.rglob("*.jpg")), pics / "die.jpg")
    lib = Library.create(tmp_path / "lib")
    stats = Indexer(lib, TINY_MODEL, timeout=60, decode_fn=kill_worker_once, ray=RayOptions()).run([str(pics)])
    assert (tmp_path / "worker-killed").exists()  # a Ray worker really died mid-task
    assert (stats.indexed, stats.skipped) == (25, 0)
    assert len(rows(lib)) == 25


def count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow  # a real driver process killed mid-run
def test_driver_killed_mid_run_then_rerun_gives_an_exact_library(cluster, tmp_path, local_vectors, pics):
    lib_dir = tmp_path / "lib"
    db = lib_dir / "clipdex.db"
    args = ["index", str(pics), "--library", str(lib_dir), "--model", "tiny", "--batch-size", "4", "--json",
            "--ray", "auto"]
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": cluster})
    deadline = time.monotonic() + 180
    while proc.poll() is None and count(db) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = count(db)
    assert 0 < partial < len(local_vectors)

    done = run_cli(*args, env={"RAY_ADDRESS": cluster})
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["encoded"] == len(local_vectors) - partial  # nothing committed before the kill is encoded again
    assert stats["unchanged"] == partial
    lib = Library.open(lib_dir)
    paths = [p for _, p, *_ in rows(lib)]
    assert len(paths) == len(set(paths)) == len(local_vectors)  # every picture exactly once
    assert_same_vectors(vectors_by_path(lib), local_vectors)
    assert sorted(lib.index().ids().tolist()) == sorted(i for i, *_ in rows(lib))


def test_ray_followed_by_a_path_is_a_local_ray_and_prints_the_usual_summary(cluster, tmp_path, pics):
    out = invoke("index", "--ray", str(pics), "--library", str(tmp_path / "lib"), "--model", "tiny")
    assert out.exit_code == 0, out.output
    assert out.stdout.startswith("indexed 48 · unchanged 0 · moved 0 · removed 0 · skipped 0 · "), out.stdout
    bad = invoke("index", str(pics), "--library", str(tmp_path / "lib"), "--ray=not an address")
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: --ray takes auto, a cluster address"), bad.stderr


def test_without_ray_installed_the_flag_says_how_to_install_it(tmp_path, pics):
    fake = tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    out = run_cli("index", str(pics), "--library", str(tmp_path / "lib"), "--ray",
                  env={"PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])})
    assert out.returncode == 2
    assert out.stderr == "Error: --ray needs Ray Data, which is not installed: pip install 'clipdex[ray]'\n"
    assert not (tmp_path / "lib").exists()  # nothing was touched


def test_a_task_that_fails_on_the_cluster_stops_the_run_in_one_line(cluster, tmp_path, pics):
    lib = Library.create(tmp_path / "lib")
    unpicklable = lambda path, size, mode, max_pixels: None  # noqa: E731 - decode workers cannot import it
    with pytest.raises(ClipdexError) as failed:
        Indexer(lib, TINY_MODEL, decode_fn=unpicklable, ray=RayOptions()).run([str(pics)])
    message = str(failed.value)
    assert message.startswith("the Ray cluster could not finish the run (") and "\n" not in message, message
    assert "\x1b[" not in message and message.endswith("run the same indexing again to continue from there")


SECRET = "Ph0t0s-S3cret"


def test_workers_get_no_library_url_nor_any_secret():
    env = {"CLIPDEX_LIBRARY": f"postgresql://clipdex:{SECRET}@db/photos", "CLIPDEX_CACHE_DIR": "/c",
           "CLIPDEX_ROOT_NAMES": "a=/x", "CLIPDEX_MACHINE": "m", "HF_TOKEN": SECRET, "PGPASSWORD": SECRET,
           "HF_ENDPOINT": f"https://me:{SECRET}@mirror", "HF_HOME": "/hf", "CLIPDEX_ONNX_CACHE": "/onnx",
           "HF_HUB_OFFLINE": "1"}
    assert worker_env(env) == {"HF_HOME": "/hf", "CLIPDEX_ONNX_CACHE": "/onnx", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow  # a real driver process joining the cluster
def test_the_database_password_never_reaches_the_cluster(cluster, tmp_path, pics):
    """``CLIPDEX_LIBRARY`` with a password in the driver's environment: Ray logs every job's runtime env
    (world-readable), so nothing of it may be in the cluster's logs; what workers need still goes."""
    env = {"RAY_ADDRESS": cluster, "CLIPDEX_LIBRARY": f"postgresql://clipdex:{SECRET}@127.0.0.1:1/photos",
           "HF_TOKEN": SECRET, "TRANSFORMERS_OFFLINE": "1"}
    done = run_cli("index", str(pics), "--library", str(tmp_path / "lib"), "--model", "tiny", "--ray", "auto",
                   env=env)
    assert done.returncode == 0, done.stderr
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    texts = [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()]
    assert any('"TRANSFORMERS_OFFLINE": "1"' in t for t in texts)  # the runtime env is logged, with what is passed
    assert not [t for t in texts if SECRET in t or "CLIPDEX_LIBRARY" in t]


def test_an_address_where_nothing_listens_fails_at_once_in_one_line(tmp_path, pics):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    out = run_cli("index", str(pics), "--library", str(tmp_path / "lib"), "--model", "tiny", "--ray",
                  f"127.0.0.1:{port}", env={"RAY_ADDRESS": ""}, timeout=120)
    assert time.monotonic() - started < 60  # ray.init alone retried for many minutes
    assert out.returncode == 1
    assert out.stderr == (f"Error: cannot connect to the Ray cluster at 127.0.0.1:{port}: nothing answers at "
                          f"127.0.0.1:{port} (Connection refused)\n"), out.stderr


HEAD = """
import os, sys, time
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow  # a second Ray, with token authentication
def test_a_cluster_wanting_another_token_is_said_in_one_line(tmp_path, pics):
    token = "a" * 32
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    head = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **auth})
    try:
        address = head.stdout.readline().strip()
        assert address, "the Ray head did not start"
        args = ["index", str(pics), "--library", str(tmp_path / "lib"), "--model", "tiny", "--ray", address]
        wrong = run_cli(*args, env={**auth, "RAY_AUTH_TOKEN": "b" * 32, "RAY_ADDRESS": ""}, timeout=120)
        assert wrong.returncode == 1
        assert wrong.stderr.startswith(f"Error: cannot connect to the Ray cluster at {address}: the cluster refused "
                                       "this machine's Ray authentication token"), wrong.stderr
        assert wrong.stderr.count("\n") == 1, wrong.stderr  # none of Ray's own retry warnings
        right = run_cli(*args, env={**auth, "RAY_ADDRESS": ""}, timeout=300)
        assert right.returncode == 0, right.stderr
        assert right.stdout.startswith("indexed 48 · "), right.stdout
    finally:
        head.stdin.close()
        head.wait(timeout=60)
