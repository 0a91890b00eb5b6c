"""Run ``clipdex watch`` beside ``clipdex serve --watch``: start the watcher as a child process, stop it.

The child is a plain ``clipdex watch`` over every folder of the library (:class:`clipdex.indexer.watch.Watcher`
does the watching there); this side only starts it so that it dies with the server, and stops it
politely first (SIGTERM, taken as Ctrl-C), by force if it must.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def start_watch_process(library_path: str | os.PathLike, backend: str | None = None) -> subprocess.Popen:
    """``clipdex watch`` on every folder of the library at ``library_path``, in a child process.

    Its lines go where this process's go; it shares this process's group (Ctrl-C at a terminal
    stops both) and, on Linux, gets SIGTERM if this process dies without stopping it. The library
    goes in its environment, not on its command line, which anyone on the machine may read (a
    database URL may hold a password).
    """
    args = [sys.executable, "-m", "clipdex", "watch"]
    if backend:
        args += ["--backend", backend]
    env = {**os.environ, "CLIPDEX_LIBRARY": str(library_path)}
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:  # in the child, before exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the server stops it itself
        pass


def stop_watch_process(proc: subprocess.Popen, grace: float = 0.0, timeout: float = 30.0) -> int | None:
    """Stop a watcher started by :func:`start_watch_process`; its exit code.

    ``grace``: seconds to let it stop by itself first (a Ctrl-C at the terminal reached it too);
    then SIGTERM, which it takes as Ctrl-C, and a kill after ``timeout`` seconds more.
    """
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
