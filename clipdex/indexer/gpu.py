"""Encoding one batch of decoded files when JPEGs may come undecoded (decoding on the GPU).

With GPU decoding on, the decode workers hand plain JPEGs over as bytes and EXIF orientation
(``decode_file(..., jpeg_bytes=True)``) and decode every other file to pixels as always. The
JPEGs are decoded and encoded where the model runs (:meth:`clipdex.models.Encoder.encode_jpegs`);
those torchvision cannot take are decoded again by the CPU decoder, in a worker process of their
own, so its reasons for refusing a file, its time limit and its crash isolation still apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from clipdex.decodepool import DecodeFn, DecodePool
from clipdex.decoding import Decoded
from clipdex.models import Encoder

#: Decodes files on the CPU: paths -> one result each, in the same order.
Redecode = Callable[[list[str]], list[Decoded]]


def cpu_redecoder(decode_fn: DecodeFn, timeout: float, size: int, mode: str) -> Redecode:
    """A :data:`Redecode` running ``decode_fn`` in a worker process started for each call.

    A call costs a process start (~0.5 s), paid only for a batch holding a JPEG that
    passed the workers' checks yet failed in torchvision: a rare file.
    """

    def redecode(paths: list[str]) -> list[Decoded]:
        pool = DecodePool(1, timeout, decode_fn=decode_fn)
        got = {d.path: d for chunk in pool.run(paths, size, mode, chunk=len(paths)) for d in chunk}
        return [got[p] for p in paths]

    return redecode


def encode_batch(encoder: Encoder, todo: list[Decoded], redecode: Redecode
                 ) -> tuple[list[tuple[Decoded, np.ndarray]], list[Decoded]]:
    """Vectors for ``todo`` (decoded files, no errors): ``(encoded, failed)``, both in ``todo``'s order.

    Files with pixels are encoded as they are; JPEG bytes through :meth:`Encoder.encode_jpegs`.
    A JPEG that fails there is replaced by what ``redecode`` makes of its path: encoded with the
    pixels, or in ``failed`` with the CPU decoder's reason. Every file of ``todo`` is in exactly
    one of the two lists; those in ``encoded`` no longer hold their bytes.
    """
    items = list(todo)
    vectors: dict[int, np.ndarray] = {}
    jpegs = [i for i, d in enumerate(items) if d.data is not None]
    if jpegs:
        got = encoder.encode_jpegs([items[i].data for i in jpegs], [items[i].orientation for i in jpegs])
        vectors.update((jpegs[j], v) for j, v in zip(got.ok, got.vectors))
        retry = [jpegs[j] for j in got.failed]
        if retry:
            for i, d in zip(retry, redecode([items[i].path for i in retry]), strict=True):
                items[i] = d
        for i in jpegs:
            if i in vectors:
                items[i] = replace(items[i], data=None)
    cpu = [i for i, d in enumerate(items) if i not in vectors and not d.error]
    if cpu:
        vectors.update(zip(cpu, encoder.encode_pixels(np.stack([items[i].pixels for i in cpu]))))
    encoded = [(d, vectors[i]) for i, d in enumerate(items) if i in vectors]
    return encoded, [d for i, d in enumerate(items) if i not in vectors]
