"""Generated photo-like scenes with known duplicates, for measuring duplicate detection.

:mod:`clipdex.synthetic`'s shapes are too uniform for this (every red circle is nearly the same
picture). Here each *scene* is a gradient background with low-frequency blotches, several
shapes of random colours and fine noise; a scene can be *shot again* (the shapes moved and
resized a little, the light changed, new noise: the same subject, another photo), and a file
can be *derived* the ways copies arise (resized, recompressed, lightly cropped, rotated by
EXIF, converted between PNG and JPEG). :func:`write_collection` writes originals, derived copies
and second shots, and returns which files are copies of which.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: How a copy is derived from its original, by name.
DERIVATIONS = ("resized", "recompressed", "cropped", "exif-rotated", "converted")
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Shape:
    kind: str  # ellipse, rectangle or polygon
    box: tuple[float, float, float, float]  # fractions of the width and height
    color: tuple[int, int, int]
    points: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Scene:
    """What a picture shows; :meth:`render` draws it with its own noise."""

    size: tuple[int, int]
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    angle: float
    shapes: tuple[Shape, ...]
    light: float = 1.0
    seed: int = 0

    def render(self) -> Image.Image:
        w, h = self.size
        rng = np.random.default_rng(self.seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (np.cos(self.angle) * x / w + np.sin(self.angle) * y / h + 1) / 3
        a, b = (np.array(c, np.float32) for c in self.colors)
        img = a * (1 - t[..., None]) + b * t[..., None]
        blotches = Image.fromarray(rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        img = 0.75 * img + 0.25 * np.asarray(blotches, np.float32)
        canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for s in self.shapes:
            box = (s.box[0] * w, s.box[1] * h, s.box[2] * w, s.box[3] * h)
            if s.kind == "ellipse":
                draw.ellipse(box, fill=s.color)
            elif s.kind == "rectangle":
                draw.rectangle(box, fill=s.color)
            else:
                draw.polygon([(box[0] + px * (box[2] - box[0]), box[1] + py * (box[3] - box[1]))
                              for px, py in s.points], fill=s.color)
        canvas = canvas.filter(ImageFilter.GaussianBlur(1.2))
        pixels = np.asarray(canvas, np.float32) * self.light + rng.normal(0, 6, (h, w, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def random_scene(rng: random.Random, size: tuple[int, int] = (480, 360)) -> Scene:
    """A new subject: background colours and angle, three to six shapes."""
    def color() -> tuple[int, int, int]:
        return tuple(rng.randint(0, 255) for _ in range(3))  # type: ignore[return-value]

    shapes = []
    for _ in range(rng.randint(3, 6)):
        cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85)
        rx, ry = rng.uniform(0.06, 0.2), rng.uniform(0.06, 0.2)
        kind = rng.choice(("ellipse", "rectangle", "polygon"))
        points = tuple((rng.random(), rng.random()) for _ in range(rng.randint(3, 6))) if kind == "polygon" else ()
        shapes.append(Shape(kind, (cx - rx, cy - ry, cx + rx, cy + ry), color(), points))
    return Scene(size, (color(), color()), rng.uniform(0, 6.28), tuple(shapes), seed=rng.randrange(1 << 30))


def shoot_again(scene: Scene, rng: random.Random) -> Scene:
    """The same subject photographed again: shapes moved and resized a little, other light, new noise."""
    def moved(s: Shape) -> Shape:
        dx, dy, grow = rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12), rng.uniform(0.85, 1.15)
        x0, y0, x1, y1 = s.box
        cx, cy, rx, ry = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, (x1 - x0) / 2 * grow, (y1 - y0) / 2 * grow
        return Shape(s.kind, (cx - rx, cy - ry, cx + rx, cy + ry), s.color, s.points)

    return Scene(scene.size, scene.colors, scene.angle + rng.uniform(-0.3, 0.3), tuple(moved(s) for s in scene.shapes),
                 light=rng.uniform(0.8, 1.2), seed=rng.randrange(1 << 30))


def derive(original: Path, how: str, target_stem: Path, rng: random.Random | None = None) -> Path:
    """Write a copy of ``original`` made ``how`` (one of :data:`DERIVATIONS`) at ``target_stem`` (the suffix
    is chosen here). A crop trims 1-6 % off each side, unevenly (drawn from ``rng``)."""
    rng = rng or random.Random(str(target_stem))
    with Image.open(original) as im:
        im = im.convert("RGB")
        is_png = original.suffix.lower() == ".png"
        if how == "resized":
            target = target_stem.with_suffix(original.suffix)
            im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(target, quality=90)
        elif how == "recompressed":
            target = target_stem.with_suffix(".jpg")
            im.save(target, quality=55)
        elif how == "cropped":
            left, top, right, bottom = (rng.uniform(0.01, 0.06) for _ in range(4))
            w, h = im.size
            target = target_stem.with_suffix(original.suffix)
            im.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))).save(
                target, quality=90)
        elif how == "exif-rotated":  # pixels stored turned a quarter, with the EXIF tag that turns them back
            target = target_stem.with_suffix(".jpg")
            exif = Image.Exif()
            exif[_ORIENTATION] = 6
            im.transpose(Image.Transpose.ROTATE_90).save(target, quality=92, exif=exif)
        elif how == "converted":
            target = target_stem.with_suffix(".jpg" if is_png else ".png")
            im.save(target, quality=92)
        else:
            raise ValueError(f"unknown derivation {how!r}")
    return target


@dataclass
class Collection:
    """What :func:`write_collection` wrote: every file, and the true duplicate groups (an original with its copies)."""

    files: list[Path] = field(default_factory=list)
    groups: list[list[Path]] = field(default_factory=list)

    def true_pairs(self) -> set[frozenset[str]]:
        """Every unordered pair of paths that are the same picture."""
        return {frozenset((str(a), str(b))) for g in self.groups for i, a in enumerate(g) for b in g[i + 1:]}


def write_collection(folder: Path, subjects: int, *, seed: int = 0, copies: int = 2, shots: int = 1,
                     exact: int = 1, taken: str | None = None) -> Collection:
    """``subjects`` originals (every third a PNG), each with ``copies`` derived copies (cycling through
    :data:`DERIVATIONS`), ``shots`` other photos of its subject (not duplicates), and, for the first
    ``exact`` subjects, a byte-identical copy. With ``taken`` ("YYYY:MM:DD HH:MM:SS") the originals carry
    it as their EXIF capture date, as a camera's do; derived copies lose it, as many conversions do."""
    rng = random.Random(seed)
    dated: dict = {}
    if taken is not None:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[36867] = taken  # Exif IFD, DateTimeOriginal
        dated["exif"] = exif
    folder.mkdir(parents=True, exist_ok=True)
    out, turn = Collection(), 0
    for n in range(subjects):
        scene = random_scene(rng, (480, 360) if n % 4 else (360, 480))
        original = folder / (f"s{n:04d}-original" + (".png" if n % 3 == 0 else ".jpg"))
        scene.render().save(original, quality=92, **dated)
        group = [original]
        for _ in range(copies):
            how = DERIVATIONS[turn % len(DERIVATIONS)]
            turn += 1
            group.append(derive(original, how, folder / f"s{n:04d}-{how}", rng))
        if n < exact:
            twin = folder / f"s{n:04d}-exact{original.suffix}"
            twin.write_bytes(original.read_bytes())
            group.append(twin)
        out.groups.append(group)
        out.files += group
        for k in range(shots):
            shot = folder / f"s{n:04d}-shot{k}.jpg"
            shoot_again(scene, rng).render().save(shot, quality=92)
            out.files.append(shot)
    return out
