"""``clipdex eval --report DIR``: one self-contained HTML page per run.

Confusion matrices are drawn as SVG pictures; the worst mistakes are shown as thumbnails
copied into ``DIR/thumbs``. Every string from files or the user is HTML-escaped.
"""

from __future__ import annotations

import hashlib
from html import escape
from pathlib import Path

from clipdex.errors import DecodeError, UsageError
from clipdex.imaging import write_thumbnail


def confusion_svg(matrix: list[list[int]], classes: list[str], cell: int = 44) -> str:
    """A heat-map picture of a confusion matrix (rows: true class, columns: predicted)."""
    n = len(classes)
    label_w = 10 + 7 * max(len(c) for c in classes)
    width, height = label_w + n * cell + 10, label_w + n * cell + 10
    peak = max(max(row) for row in matrix) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" width="{width}" height="{height}" '
             f'role="img" aria-label="confusion matrix">']
    for i, name in enumerate(classes):
        y = label_w + i * cell + cell / 2
        parts.append(f'<text x="{label_w - 6}" y="{y + 4}" text-anchor="end">{escape(name)}</text>')
        x = label_w + i * cell + cell / 2
        parts.append(f'<text transform="translate({x + 4},{label_w - 6}) rotate(-60)">{escape(name)}</text>')
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            shade = count / peak
            colour = f"rgb({int(255 - 200 * shade)},{int(255 - 140 * shade)},{255 - int(40 * shade)})"
            if i != j and count:
                colour = f"rgb(255,{int(235 - 150 * shade)},{int(235 - 150 * shade)})"
            x, y = label_w + j * cell, label_w + i * cell
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" stroke="#999"/>'
                         f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _thumbnail(path: str, folder: Path) -> str | None:
    """A 160 px copy of a mistaken picture beside the report (None if it cannot be read now)."""
    name = hashlib.sha1(path.encode()).hexdigest()[:16] + ".jpg"
    target = folder / name
    if not target.exists():
        try:
            write_thumbnail(path, target, 160)
        except DecodeError:
            return None
    return f"thumbs/{name}"


def write_report(folder: Path, dataset: str, classes: list[str], results: list[dict]) -> Path:
    """Write ``folder/index.html`` for the results of :func:`clipdex.classify.evaluate.evaluate`."""
    prepare(folder)
    try:
        return _write(folder, dataset, classes, results)
    except OSError as exc:
        raise UsageError(f"cannot write the report into {folder}: {exc.strerror}") from None


def prepare(folder: Path) -> None:
    """Make the report folder (call before the work, so a bad folder fails at once)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the report into {folder}: {exc.strerror}") from None


def _write(folder: Path, dataset: str, classes: list[str], results: list[dict]) -> Path:
    sections = []
    for r in results:
        prompts = "".join(f"<li><b>{escape(c)}</b>: {escape(p)}</li>" for c, p in r["prompts"].items())
        rows = "".join(
            f"<tr><td>{escape(c)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
            f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>" for c, m in r["per_class"].items())
        mistakes = []
        for m in r["mistakes"]:
            src = _thumbnail(m["path"], folder / "thumbs")
            img = f'<img src="{escape(src)}" alt="">' if src else ""
            mistakes.append(f'<figure>{img}<figcaption>{escape(Path(m["path"]).name)}<br>'
                            f'{escape(m["truth"])} → {escape(m["predicted"])} ({m["p_predicted"]:.0%})'
                            f'</figcaption></figure>')
        sections.append(
            f'<section><h2>Templates: {escape(r["templates"])} ({r["n_templates"]})</h2><ul>{prompts}</ul>'
            f'<p class="score">accuracy <b>{r["accuracy"]:.3f}</b> · balanced accuracy '
            f'<b>{r["balanced_accuracy"]:.3f}</b></p>'
            f'<p>Confusion matrix: rows are the true classes, columns the predicted ones.</p>'
            f'{confusion_svg(r["confusion"], classes)}'
            f'<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>n</th></tr>{rows}</table>'
            f'<h3>Worst mistakes</h3><div class="mistakes">{"".join(mistakes) or "<p>None.</p>"}</div></section>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>clipdex eval: {escape(dataset)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }}
section {{ border-top: 1px solid #ccc; padding-top: 1rem; margin-top: 1.5rem; }}
.confusion text {{ font-size: 12px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ddd; padding: .2rem .5rem; }}
.mistakes {{ display: flex; flex-wrap: wrap; gap: .6rem; }} figure {{ margin: 0; width: 160px; font-size: .8rem; }}
</style></head><body>
<h1>Zero-shot evaluation</h1>
<p>Dataset <code>{escape(dataset)}</code>: {len(classes)} classes ({escape(", ".join(classes))}).</p>
{"".join(sections)}
</body></html>
"""
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
