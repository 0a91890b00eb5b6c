"""Generated pictures of coloured shapes, with their captions.

The tiny model is trained on these, the demo indexes them and the tests measure search
and tagging quality on them, so all three agree on what "a red circle" looks like.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 215),
    "yellow": (240, 210, 25),
    "purple": (130, 45, 165),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: Caption templates used in training; ``{c}`` is a colour, ``{s}`` a shape.
FULL_TEMPLATES = (
    "a {c} {s}",
    "a {c} {s}.",
    "a photo of a {c} {s}.",
    "a picture of a {c} {s}",
    "an image of a {c} {s}.",
    "a {c} {s} on a plain background",
    "a drawing of a {c} {s}",
    "a big {c} {s}",
    "a small {c} {s}",
    "{c} {s}",
)
SHAPE_TEMPLATES = ("a {s}", "a photo of a {s}.", "a picture of a {s}", "an image of a {s}.", "{s}")
COLOR_TEMPLATES = ("something {c}", "a photo of something {c}.", "a {c} thing", "{c}", "the colour {c}")


@dataclass(frozen=True)
class Sample:
    """What one generated picture shows."""

    color: str
    shape: str

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = 4
        radii = [r * 1.05] * corners
        offset = math.pi / 4
    elif shape == "triangle":
        corners = 3
        radii = [r * 1.15] * corners
        offset = -math.pi / 2
    else:  # star
        corners = 10
        radii = [r * 1.15 if i % 2 == 0 else r * 0.48 for i in range(corners)]
        offset = -math.pi / 2
    return [
        (
            cx + radii[i] * math.cos(offset + angle + 2 * math.pi * i / corners),
            cy + radii[i] * math.sin(offset + angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def draw(sample: Sample, size: tuple[int, int] = (256, 256), rng: random.Random | None = None) -> Image.Image:
    """Draw ``sample`` on a light, slightly noisy background, centred in the frame's middle square."""
    rng = rng or random.Random()
    w, h = size
    base = rng.randint(190, 250)
    tint = tuple(max(0, min(255, base + rng.randint(-18, 18))) for _ in range(3))
    im = Image.new("RGB", size, tint)
    d = ImageDraw.Draw(im)
    side = min(w, h)
    r = side * rng.uniform(0.2, 0.36)
    cx = w / 2 + rng.uniform(-0.1, 0.1) * side
    cy = h / 2 + rng.uniform(-0.1, 0.1) * side
    jitter = 28
    fill = tuple(max(0, min(255, v + rng.randint(-jitter, jitter))) for v in COLORS[sample.color])
    if sample.shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        angle = rng.uniform(-0.25, 0.25)
        d.polygon(_polygon(sample.shape, cx, cy, r, angle), fill=fill)
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return im


def all_samples() -> list[Sample]:
    """Every colour-shape combination."""
    return [Sample(c, s) for c in COLORS for s in SHAPES]


def captions(sample: Sample) -> list[str]:
    """Every caption the training set uses for ``sample``."""
    return [t.format(c=sample.color, s=sample.shape) for t in FULL_TEMPLATES]


def write_collection(
    folder: str | Path,
    per_class: int = 4,
    seed: int = 0,
    samples: list[Sample] | None = None,
    taken: dt.datetime | None = None,
) -> dict[Path, Sample]:
    """Write ``per_class`` JPEGs of each sample into ``folder/<colour>/``; return path -> sample.

    With ``taken``, every picture carries it as its EXIF capture date (DateTimeOriginal).
    """
    rng = random.Random(seed)
    folder = Path(folder)
    extra: dict = {}  # without ``taken`` the files stay byte for byte what earlier versions wrote
    if taken is not None:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = taken.strftime("%Y:%m:%d %H:%M:%S")  # Exif IFD, DateTimeOriginal
        extra["exif"] = exif
    written: dict[Path, Sample] = {}
    for sample in samples or all_samples():
        sub = folder / sample.color
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = rng.choice([(320, 240), (256, 256), (240, 320), (400, 300)])
            path = sub / f"{sample.shape}-{i:03d}.jpg"
            draw(sample, size, rng).save(path, quality=90, **extra)
            written[path] = sample
    return written


def iter_training(rng: random.Random) -> Iterator[tuple[Image.Image, Sample]]:
    """Endless random pictures for training."""
    pool = all_samples()
    while True:
        sample = rng.choice(pool)
        size = (rng.randint(96, 320), rng.randint(96, 320))
        yield draw(sample, size, rng), sample
