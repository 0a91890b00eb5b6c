"""CLIP's byte-pair tokenizer in pure Python + numpy: open_clip's ``SimpleTokenizer`` without torch.

open_clip's tokenizer returns torch tensors and importing ``open_clip`` imports torch (seconds of
start-up), so the ONNX query path uses this port. It must give exactly open_clip's tokens: the
same cleaning (ftfy, HTML unescape, whitespace, lower case), the same split pattern, the same
merges from the ``bpe_simple_vocab_16e6.txt.gz`` that ships inside open_clip, start/end tokens,
and truncation to the context length with the end token kept. An export checks this against
open_clip on a probe set before the ONNX backend is accepted (see :mod:`clipdex.onnx.export`).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
import string
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

#: Name of the merges file inside the open_clip package.
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
#: The merges an export folder keeps: the lines the tokenizer reads, uncompressed (gzip cost ~0.08 s a start).
MERGES_FILENAME = "bpe_merges.txt"
#: Cleaning kinds open_clip's SimpleTokenizer knows (``clean=`` argument).
CLEAN_KINDS = ("lower", "whitespace", "canonicalize")
_SPECIAL = ["<start_of_text>", "<end_of_text>"]
_NUM_MERGES = 49152 - 256 - 2
#: Words whose merges are remembered before the memory is cleared.
_CACHE_LIMIT = 50_000  # open_clip reads lines 1 .. 48894 of the merges file


def default_bpe_path() -> Path:
    """The merges file of the installed open_clip, found without importing open_clip (which imports torch)."""
    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed, so its BPE merges file cannot be found")
    for folder in found.submodule_search_locations:
        path = Path(folder) / BPE_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"{BPE_FILENAME} not found in the open_clip package")


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from UTF-8 bytes to printable characters (no whitespace or control ones)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


#: Anything outside printable ASCII (less ``&``) plus tab and newline: only then can ftfy change the text.
_NEEDS_FTFY = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def _basic_clean(text: str) -> str:
    """ftfy, then HTML unescaped twice, stripped. ftfy leaves plain ASCII without ``&`` as it is
    (checked in the tests), so it is imported only for other texts: its import costs ~0.1-0.2 s."""
    if _NEEDS_FTFY.search(text):
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _clean(text: str, kind: str) -> str:
    """open_clip's ``get_clean_fn(kind)`` applied to ``text``."""
    text = _basic_clean(text)
    if kind == "lower":
        return _whitespace_clean(text).lower()
    if kind == "whitespace":
        return _whitespace_clean(text)
    # canonicalize: underscores to spaces, punctuation removed, lower case, whitespace collapsed
    text = text.replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


def read_merges(path: str | Path) -> list[str]:
    """The merge lines open_clip reads, from its gzipped vocabulary file or a plain :data:`MERGES_FILENAME`."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path) as fh:
            return fh.read().decode("utf-8").split("\n")[1:_NUM_MERGES + 1]
    return path.read_text("utf-8").split("\n")[:_NUM_MERGES]


def write_merges(source: str | Path, target: str | Path) -> None:
    """Write the merge lines of ``source`` uncompressed, as an export folder keeps them."""
    Path(target).write_text("\n".join(read_merges(source)), "utf-8")


class ClipTokenizer:
    """Texts to ``int64`` token arrays of shape ``(N, context_length)``, exactly as open_clip's SimpleTokenizer."""

    def __init__(self, bpe_path: str | Path | None = None, context_length: int = 77, clean: str = "lower",
                 additional_special_tokens: list[str] | None = None):
        if clean not in CLEAN_KINDS:
            raise ValueError(f"unknown tokenizer cleaning {clean!r} (known: {', '.join(CLEAN_KINDS)})")
        if context_length < 2:
            raise ValueError(f"context length must be at least 2, not {context_length}")
        self.context_length = int(context_length)
        self.clean = clean
        self.byte_encoder = _bytes_to_unicode()
        lines = read_merges(bpe_path or default_bpe_path())
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + [line.replace(" ", "") for line in lines]
        special = _SPECIAL + list(additional_special_tokens or [])
        vocab.extend(special)
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab))))
        # a merge "a b" is looked up by its line: building tuples of 49k pairs cost ~0.07 s a start
        self.bpe_ranks: dict[str, int] = dict(zip(lines, range(len(lines))))
        self._special = special
        self._cache: dict[str, str] = {t: t for t in special}
        self.sot_token_id = self.encoder[_SPECIAL[0]]
        self.eot_token_id = self.encoder[_SPECIAL[1]]
        self.pattern = regex.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def _bpe(self, token: str) -> str:
        """Merge the characters of one pre-token by rank; the result is space-separated vocabulary entries."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        never = len(ranks)
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(f"{pair[0]} {pair[1]}", never))
            if f"{bigram[0]} {bigram[1]}" not in ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        result = " ".join(word)
        if len(self._cache) > _CACHE_LIMIT:  # a server sees endless new words: keep the memory bounded
            self._cache = {t: t for t in self._special}
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens or padding."""
        ids: list[int] = []
        for piece in self.pattern.findall(_clean(text, self.clean)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(piece).split(" "))
        return ids

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        """``(N, context_length)`` int64 ids: start, tokens, end, zero padding; too long texts keep the end token."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, :len(ids)] = ids
        return out
