"""The ``clipdex`` command line: parses, calls the library, prints.

Each command family lives in its own module and is registered here. Heavy modules
(torch, open_clip, faiss) are imported inside the commands, so ``clipdex --help``
answers at once.
"""

from __future__ import annotations

import click

from clipdex import __version__
from clipdex.cli import classify, indexing, info, search, serve, tags


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipdex")
def main() -> None:
    """Search and tag your pictures by what they show.

    \b
    Start with:   clipdex demo                  (offline, tiny built-in model)
    Then:         clipdex index ~/Pictures      (incremental; re-run any time)
                  clipdex search "a dog on a beach at sunset"
                  clipdex tag --labels "cat,dog,car"
    """


for command in (indexing.index, search.search, tags.tag, tags.tags, info.info, info.skipped, serve.serve,
                info.demo, classify.eval_command, classify.probe):
    main.add_command(command)
