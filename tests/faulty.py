"""Decoders that fail for real on chosen files: they exercise the worker time limit and crash recovery.

They wrap the real decoder; only files whose name says so spin (an endless loop), hang
(blocked, no CPU used) or crash (the worker process aborts with SIGABRT).
"""

from __future__ import annotations

import os
import time

from clipdex.decoding import Decoded, decode_file


def hang_or_crash(path: str, size: int, mode: str, max_pixels: int) -> Decoded:
    name = os.path.basename(path)
    if name.startswith("spin"):  # a decoder stuck in a loop: burns CPU, never returns
        while True:
            pass
    if name.startswith("hang"):  # a decoder blocked without using CPU (a dead network share)
        time.sleep(3600)
    if name.startswith("crash"):
        os.abort()
    return decode_file(path, size, mode, max_pixels)
