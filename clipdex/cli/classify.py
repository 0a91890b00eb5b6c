"""``clipdex eval`` and ``clipdex probe``: measure zero-shot classifiers, train linear probes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipdex.cli.common import (
    backend_option,
    fail_cleanly,
    json_option,
    library_option,
    library_path,
    loaded,
    model_option,
    print_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library
    from clipdex.models import Encoder


def _existing_library(library: Path | None) -> tuple[Library | None, Path]:
    """The library the command reads, or None when there is none (yet) at its path."""
    from clipdex.errors import NoLibrary
    from clipdex.library import Library

    path = library_path(library)
    try:
        return Library.open(path), path
    except NoLibrary:
        return None, path


def _encoder(lib: Library | None, model: str | None, backend: str | None) -> Encoder:
    """``--model``, else the library's model, else the default one; loaded."""
    from clipdex.models import DEFAULT_MODEL, Encoder

    if model is None and lib is not None:
        return loaded(lib.encoder_for(None, backend=backend, bulk=True))
    return loaded(Encoder(model or DEFAULT_MODEL, backend=backend, bulk=True))


def _table(results: list[dict], classes: list[str]) -> None:
    click.echo(f"{'#':>2}  {'templates':<14} {'accuracy':>8} {'balanced':>8}  prompts")
    for i, r in enumerate(results, 1):
        prompts = " | ".join(r["prompts"][c] for c in classes)
        click.echo(f"{i:>2}  {r['templates'] + ' (' + str(r['n_templates']) + ')':<14} "
                   f"{r['accuracy']:8.3f} {r['balanced_accuracy']:8.3f}  {prompts}")
    best = max(results, key=lambda r: r["balanced_accuracy"])
    click.echo(f"\nbest: #{results.index(best) + 1}; per class (precision / recall / F1):")
    for c, m in best["per_class"].items():
        click.echo(f"  {c:<20} {m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}  (n={m['support']})")
    if best["mistakes"]:
        click.echo("worst mistakes:")
        for m in best["mistakes"][:5]:
            click.echo(f"  {m['p_predicted']:.2f} {m['predicted']!r} (truth {m['truth']!r})  {m['path']}")


@click.command("eval")
@click.argument("dataset", type=click.Path(path_type=Path))
@library_option
@click.option("--prompts", "prompt_sets", multiple=True, metavar="SPEC",
              help='A prompt set: "cat|dog" (the class names) or "cat=a photo of a cat|dog=a photo of a dog" '
              "(repeatable; all are compared) [default: the class names].")
@click.option("--templates", "template_names", multiple=True, type=click.Choice(["plain", "photo", "imagenet"]),
              help="Template ensemble(s) to compare: plain ({}), photo (a photo of a {}.), imagenet "
              "(CLIP's 80) [default: photo].")
@click.option("--template", "custom", multiple=True, help="A template of your own with {} (repeatable; one ensemble).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write an HTML report (confusion matrices, mistakes) into this folder.")
@model_option
@backend_option
@json_option
@fail_cleanly
def eval_command(dataset: Path, library: Path | None, prompt_sets: tuple[str, ...], template_names: tuple[str, ...],
                 custom: tuple[str, ...], report_dir: Path | None, model: str | None, backend: str | None,
                 as_json: bool) -> None:
    """Measure zero-shot classification on a labelled DATASET (class folders or a path,label CSV).

    No library is needed: pictures are encoded with --model. Those a library built with the
    same model already holds reuse their stored vectors.
    """
    from clipdex.classify.datasets import embed, load_dataset
    from clipdex.classify.evaluate import evaluate, parse_prompts, template_set
    from clipdex.classify.tagging import check_templates

    data = load_dataset(dataset)
    prompts = [parse_prompts(spec, data.classes) for spec in prompt_sets]  # before any picture is encoded
    names = list(template_names) or ([] if custom else ["photo"])
    sets = [template_set(n) for n in names]
    if custom:
        names.append("custom")
        sets.append(check_templates(list(custom)))
    if report_dir:
        from clipdex.classify.report import prepare

        prepare(report_dir)
    lib, _ = _existing_library(library)
    encoder = _encoder(lib, model, backend)
    embed(data, encoder, lib)
    results = evaluate(data, encoder, prompts, sets, names)
    report = None
    if report_dir:
        from clipdex.classify.report import write_report

        report = str(write_report(report_dir, str(dataset), data.classes, results))
    if as_json:
        print_json({"dataset": str(dataset), "model": str(encoder.spec), "classes": data.classes,
                    "pictures": len(data.paths), "reused_vectors": data.reused, "encoded": data.encoded,
                    "skipped": data.skipped, "results": results, "report": report})
        return
    click.echo(f"{len(data.paths)} pictures, {len(data.classes)} classes, model {encoder.spec} "
               f"({data.reused} stored vectors reused, {data.encoded} encoded, {len(data.skipped)} unreadable)")
    _table(results, data.classes)
    if report:
        click.echo(f"report: {report}")


@click.group()
def probe() -> None:
    """Linear probes: classifiers learned from a few labelled examples."""


@probe.command("train")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Name to store the probe under (letters, digits, - and _).")
@library_option
@click.option("--seed", default=0, show_default=True, help="Seed of the train/validation/test split.")
@model_option
@backend_option
@json_option
@fail_cleanly
def probe_train(dataset: Path, name: str, library: Path | None, seed: int, model: str | None, backend: str | None,
                as_json: bool) -> None:
    """Fit a logistic regression on DATASET's embeddings and store it in the library.

    Without a library, one is created for the probe, bound to --model (no pictures yet):
    index into it later with the same model, then tag with the probe.
    """
    from clipdex.classify.datasets import embed, load_dataset
    from clipdex.classify.probe import check_name, save_probe, train_probe
    from clipdex.library import Library

    check_name(name)
    data = load_dataset(dataset)
    lib, path = _existing_library(library)
    if lib is not None:  # a probe reads the library's model
        encoder = loaded(lib.encoder_for(model, backend=backend, bulk=True))
    else:
        encoder = _encoder(None, model, backend)
    trained = train_probe(encoder, embed(data, encoder, lib), name, seed)
    created = lib is None
    target = lib or Library.create(path)
    try:
        save_probe(target, encoder, trained)
    except BaseException:
        if created:
            target.discard_if_unused()  # no empty library left behind
        raise
    if created:
        again = f" --library {path}" if library else ""
        click.echo(f"(created a library at {path} for model {encoder.spec}, holding the probe; add pictures with: "
                   f"clipdex index PATH{again})", err=True)
    report = trained.report
    if as_json:
        print_json(report.as_dict())
        return
    click.echo(f"probe {name!r}: {len(report.classes)} classes, trained on {report.train} pictures "
               f"(L2 {report.l2:g} chosen on {report.validation}), tested on {report.test} unseen pictures")
    click.echo(f"  held-out accuracy: probe {report.probe_accuracy:.3f} · zero-shot {report.zero_shot_accuracy:.3f}")


@probe.command("list")
@library_option
@json_option
@fail_cleanly
def probe_list(library: Path | None, as_json: bool) -> None:
    """List the probes stored in the library."""
    from clipdex.classify.probe import list_probes
    from clipdex.library import Library

    probes = list_probes(Library.open(library_path(library)))
    if as_json:
        print_json(probes)
        return
    if not probes:
        click.echo("No probes.")
        return
    rows = [("name", "classes", "test accuracy", "model")]
    rows += [(p["name"], ", ".join(p["classes"]), f"{p['test_accuracy']:.3f}", p["model"]) for p in probes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
