"""Write a file so that readers see the old content or the whole new one, never a part.

The bytes go to a temporary file beside the target (same filesystem), which is renamed
over it; the temporary file is removed whatever happens, so a full disk or a crash leaves
no partial or empty file under the target's name and no ``.tmp`` litter.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(target: Path, data: bytes | bytearray | memoryview, *, durable: bool = False) -> Path:
    """Replace ``target`` with ``data`` atomically; ``durable`` also fsyncs before the rename."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target

