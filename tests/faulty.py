"""Decoders that fail for real on chosen files: they exercise the worker time limit and crash recovery.

They wrap the real decoder; only files whose name says so hang (sleep past the limit)
or crash (SIGABRT/SIGSEGV-style abort of the worker process).
"""

from __future__ import annotations

import os
import time

from clipdex.indexer.decode import Decoded, decode_file


def hang_or_crash(path: str, size: int, mode: str, max_pixels: int) -> Decoded:
    name = os.path.basename(path)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("crash"):
        os.abort()
    return decode_file(path, size, mode, max_pixels)
