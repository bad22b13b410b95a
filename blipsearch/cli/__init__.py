"""The ``blipsearch`` command line. It parses, calls :class:`blipsearch.Library`, prints.

The commands live by group in the modules beside this one, the pieces they share in
:mod:`.options`; this module makes the group and adds them to it. None of them imports this
module back.
"""

from __future__ import annotations

import click

# Only light modules, here and in the command modules (see .options).
from . import describe, engines, indexing, manage, search, serve, texts, xmp


class Commands(click.Group):
    """The command group; an argument holding a NUL character or a lone surrogate that stands for no
    byte (neither of which a shell can pass, nor a file name hold) is a usage error before any
    command parses it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            try:
                arg.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise click.UsageError(f"The argument {arg[:40]!r} holds a lone surrogate, which no command "
                                       "line can pass.", ctx) from None
            if "\0" in arg:
                raise click.UsageError("An argument holds a NUL character, which no command line can pass.", ctx)
        return super().parse_args(ctx, args)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="blipsearch")
def main() -> None:
    """Search your photos by text and by image with BLIP.

    \b
    Index a folder once (re-running only picks up what changed):
      blipsearch index ~/Pictures
    Then search it:
      blipsearch search "a dog running on the beach"
      blipsearch similar ~/Pictures/beach.jpg
    Offline demo with the bundled model, in a library of its own:
      blipsearch demo-photos demo/photos
      blipsearch index demo/photos --model builtin:shapes --library demo/library --captions
      blipsearch serve --library demo/library
    """


# In the order they were written in (`--help` lists them by name).
for command in (indexing.index, indexing.watch, search.search, describe.caption, describe.ask, search.similar,
                search.duplicates, texts.texts, search.lookup, texts.tag, manage.demo_photos, manage.convert,
                manage.status, manage.upgrade, manage.failures, serve.serve, describe.explain, manage.eval_command,
                xmp.xmp, manage.image, engines.engine):
    main.add_command(command)
del command

__all__ = ["Commands", "main"]
