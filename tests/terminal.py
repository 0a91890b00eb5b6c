"""Run the real ``clipdex`` as a user would: in its own session, its stderr on a terminal (a pty).

The test reads what the user would see as it appears (progress lines, the bar) and can
act at a precise point of the run (interrupt it, kill it) without sleeping or polling
the clock; afterwards it can list the processes the command left in its process group.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios

#: Only a safety net against a hung test; no assertion depends on time.
DEADLINE = 300


class Terminal:
    """``clipdex ARGS`` with stderr on a 200-column pty; stdout is a pipe (JSON stays clean)."""

    def __init__(self, *args: str, env: dict | None = None):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipdex", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=slave, start_new_session=True, restore_signals=True,
            # a shell's background job starts with SIGINT ignored, and Python then keeps it ignored: a
            # user's clipdex always has Ctrl-C, so the child gets the default back
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "0", **(env or {})},
        )
        os.close(slave)
        self.master = master
        self.seen = ""

    def _read(self) -> bool:
        ready, _, _ = select.select([self.master], [], [], DEADLINE)
        assert ready, f"no output for {DEADLINE}s; so far:\n{self.seen}"
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            return False
        self.seen += chunk.decode(errors="replace")
        return bool(chunk)

    def wait_for(self, pattern: str) -> re.Match:
        """Read the terminal until ``pattern`` appears in what was shown (fails if the command ends first)."""
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.seen)
            if found:
                return found
            assert self._read(), f"{pattern!r} never appeared; the terminal showed:\n{self.seen}"

    def finish(self) -> tuple[int, str, str]:
        """Read to the end; ``(exit code, stdout, what the terminal showed)``."""
        while self._read():
            pass
        out = self.proc.stdout.read().decode()
        code = self.proc.wait(timeout=DEADLINE)
        os.close(self.master)
        return code, out, self.seen

    @property
    def group(self) -> int:
        return self.proc.pid  # a new session: its process group id is its pid


def processes_in_group(pgid: int) -> list[str]:
    """``pid state command`` of every process (zombies too) still in process group ``pgid``."""
    left = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    command = fh.read().replace(b"\0", b" ").decode(errors="replace")[:150]
                left.append(f"{entry} {fields[0]} {command}")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return left
