"""Finding images and texts: ``search``, ``similar``, ``lookup``, ``duplicates``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import BlipsearchError
from ..filters import Filters
from ..options import DEFAULT_RERANK_DEPTH, AnswerSettings, CaptionSettings
from ..search.query import image_term, text_term
from ..text import same_answer
from .options import (
    HEADER,
    TEXT,
    Amount,
    PositiveInt,
    _choices_option,
    _echo_path,
    _filter_options,
    _json_line,
    _nonempty,
    _output_flags,
    _percent,
    _print_hits,
    _read_choices,
    shown_path,
    with_existing_library,
    with_served_library,
)

if TYPE_CHECKING:
    from ..library import Library


@click.command()
@click.argument("text", type=TEXT, callback=_nonempty)
@_output_flags
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rerank this many of the best ITC candidates with the ITM head "
                   "(each costs one vision-encoder pass plus one cross-attention pass).")
@click.option("--no-rerank", is_flag=True,
              help="Rank by ITC cosine only: no image is read or matched again, and no model is loaded (TEXT is "
                   "embedded by a numpy copy of the text encoder).")
@click.option("--hybrid", is_flag=True,
              help="Also match the words of TEXT against captions, file and folder names "
                   "(full text), fused with the vector ranking before reranking.")
@click.option("--and", "also", multiple=True, type=TEXT, metavar="TEXT",
              help="Also look for TEXT (repeatable; `2*TEXT` weighs it twice). See 'Composite queries' below.")
@click.option("--not", "without", multiple=True, type=TEXT, metavar="TEXT",
              help="Look away from TEXT: its vector is subtracted and its ITM match lowers the score.")
@click.option("--like", "like", multiple=True, type=TEXT, metavar="IMAGE",
              help="Also look like IMAGE (a file, or an indexed image's id; ITC only; repeatable).")
@click.option("--unlike", "unlike", multiple=True, type=TEXT, metavar="IMAGE", help="Look unlike IMAGE (ITC only).")
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@click.option("--caption", "with_caption", is_flag=True, help="Add a generated caption to each hit (cached).")
@click.option("--ask", "question", type=TEXT, metavar="QUESTION", help="Ask each hit a question; adds `answer`.")
@click.option("--answer", "expected", type=TEXT, metavar="VALUE",
              help="With --ask: keep only the hits whose answer is VALUE (e.g. --ask 'is there a dog?' --answer yes).")
@click.option("--examine", type=PositiveInt(), default=None,
              help="With --answer: how many top hits to ask. Default: max(k, --rerank-depth).")
@click.option("--plain", is_flag=True, help="Search for TEXT as typed: no keys, quotes or +/- terms are read in it.")
@click.option("--all", "match_set", is_flag=True,
              help="Every photo that matches TEXT (ITM match probability at least --min-match), not the k best: "
                   "the closest photos by cosine are checked in growing batches until the rest are unlikely to match.")
@click.option("--min-match", type=click.FloatRange(0, 1), default=0.5, show_default=True, metavar="P",
              help="With --all: the least match probability of a photo in the set.")
@click.option("--sort", type=click.Choice(["score", "date", "-date"]), default="score", show_default=True,
              help="With --all: best first, by capture time (else file time), or newest first.")
@click.option("--max-check", type=PositiveInt(), default=None, metavar="N",
              help="With --all: score at most N photos (the set may then miss some).")
@_choices_option
@_filter_options
@with_served_library
def search(lib: Library, text: str, k: int, as_json: bool, paths_only: str | None, rerank_depth: int,
           no_rerank: bool, hybrid: bool, tag: str | None, with_caption: bool, question: str | None, expected: str | None,
           examine: int | None, choices_file: Path | None, shortlist: int, filters: Filters,
           also: tuple[str, ...], without: tuple[str, ...], like: tuple[str, ...], unlike: tuple[str, ...],
           match_set: bool, min_match: float, sort: str, max_check: int | None, plain: bool) -> None:
    """Find the images that best match TEXT.

    Candidates come from the vector index by cosine similarity (ITC); the best
    --rerank-depth are rescored by BLIP's image-text matching head, and ranked
    by ITM logit + cosine as in the BLIP paper. Output: rank; score (for
    reranked hits ITM logit + cosine, higher is better and often below 0; for
    the others the cosine); match (ITM's probability that the photo matches
    TEXT, a dash when not reranked); path.

    \b
    Examples:
      blipsearch search "a red circle left of a blue square" -k 5
      blipsearch search "sunset over the sea" --paths0 | xargs -0 ls -l
      blipsearch search "a dog in the park" --caption
      blipsearch search "birthday cake" --hybrid
      blipsearch search "a street at night" --ask "is it raining?" --answer yes
      blipsearch search "a kitchen" --ask "what room is it?" --answer kitchen --choices rooms.txt
      blipsearch search "the beach" --folder ~/Pictures/Trips --after 2024-06 --before 2024-09
      blipsearch search "a beach" --and "2*sunset" --not "people"
      blipsearch search "at night" --like ~/Pictures/street.jpg
      blipsearch search "a dog on the beach" --all --sort date
      blipsearch search 'beach sunset -people camera:canon after:2024-06 all:yes sort:date'

    \b
    The search box's language (TEXT, unless --plain): words and "quoted phrases"
    are the search text; +TEXT and -TEXT (or 2*TEXT) are --and and --not terms;
    keys: after:DATE before:DATE camera:TEXT format:NAME in:FOLDER size:WxH
    tag:LABEL like:IMAGE unlike:IMAGE min:P sort:score|date|-date all:yes.
    A key it doesn't know, or a value it can't read, is an error naming where.

    \b
    Match sets (--all): every photo whose match probability for TEXT is at
    least --min-match, in score or date order; the last line says how many
    photos were checked (with --json, a line of counts: matches, checked,
    searched, stopped, expected_missed).

    \b
    Composite queries: ITC ranks by the normalized weighted sum of the vectors
    of TEXT (weight 1) and of each --and/--like term, minus each --not/--unlike
    term; ITM reranking adds the weighted ITM logits of the texts (--not ones
    subtracted) over the sum of the positive weights. `match` stays TEXT's.
    """
    text, parsed_terms, filters, box = _read_box(text, plain, filters)
    match_set = box.all if box.all is not None else match_set
    min_match = box.min_match if box.min_match is not None else min_match
    sort = box.sort or sort
    if expected is not None and question is None:
        raise click.UsageError("--answer needs --ask QUESTION.")
    if choices_file is not None and question is None:
        raise click.UsageError("--choices needs --ask QUESTION.")
    answers = AnswerSettings(choices=_read_choices(choices_file), shortlist=shortlist)
    if expected is not None and answers.choices and not any(same_answer(c, expected) for c in answers.choices):
        raise click.UsageError(f"--answer {expected!r} is not one of the {len(answers.choices)} choices in "
                               f"{choices_file}.")
    depth = 0 if no_rerank else rerank_depth
    wanted = (examine or max(k, depth)) if expected is not None else k
    try:
        terms = ([text_term(t) for t in also] + [text_term(t, -1) for t in without]
                 + [image_term(i) for i in like] + [image_term(i, -1) for i in unlike]) + parsed_terms
    except BlipsearchError as exc:
        raise click.UsageError(str(exc)) from None
    if match_set:
        if hybrid or no_rerank or question is not None or with_caption:
            raise click.UsageError("--all finds the photos ITM matches: it takes no --hybrid, --no-rerank, "
                                   "--caption or --ask.")
        found = lib.search(text, all=True, min_match=min_match, sort=sort, max_check=max_check, filters=filters,
                           terms=terms)
        _print_match_set(found, text, as_json, paths_only)
        _warn_unsearchable(lib)
        return
    hits = lib.search(text, wanted, rerank_depth=depth, rerank_hits=depth > 0, hybrid=hybrid, filters=filters,
                      terms=terms)
    settings = CaptionSettings() if with_caption else None
    if expected is not None:
        hits = lib.describe(hits, question=question, answers=answers)
        examined = len(hits)
        kept = lib.keep_answer(hits, expected)
        hits = kept[:k]
        shown = f" (showing {len(hits)})" if len(hits) < len(kept) else ""
        click.echo(f"Asked {question!r} of the top {examined} hits: {len(kept)} answered {expected!r}{shown}.",
                   err=True)
        if settings is not None:
            hits = lib.describe(hits, caption=settings)
    elif settings is not None or question is not None:
        hits = lib.describe(hits, caption=settings, question=question, answers=answers)
    if not hits and tag is not None:
        click.echo(f"No indexed image is tagged {tag!r} (tags come from `blipsearch index --tags FILE`).", err=True)
    _print_hits(hits, as_json, paths_only)
    if filters and not as_json and not paths_only:
        matching = lib.count(filters)
        click.echo(f"{matching:,} indexed {'photo matches' if matching == 1 else 'photos match'} the filters.",
                   err=True)
    _warn_unsearchable(lib)


def _read_box(text: str, plain: bool, filters: Filters) -> tuple[str, list[Any], Filters, Any]:
    """TEXT in the search box's language (:mod:`blipsearch.search.language`): the search text, its
    terms, the options' filters narrowed by the box's keys, and what the box said of --all,
    --min-match and --sort."""
    from ..search.language import parse_query

    try:
        box = parse_query(text, plain=plain)
        narrowed = box.narrow(filters)
    except BlipsearchError as exc:
        raise click.UsageError(str(exc)) from None
    if not box.text.strip():
        raise click.UsageError("TEXT holds no words to search for, only keys: add some (or use --plain).")
    return box.text, list(box.terms), narrowed, box


def _print_match_set(found: Any, text: str, as_json: bool, paths_only: str | None) -> None:
    """The matches as search prints hits (with the capture date when sorted by it), then how far the
    search went: a JSON line of counts, or a sentence on stderr; with no match, the closest photos."""
    summary = {k: v for k, v in found.to_dict().items() if k not in ("hits", "others")}
    by_date = summary["sort"] != "score"
    if as_json or paths_only:
        _print_hits(found.hits, as_json, paths_only)
        if as_json:
            _json_line(summary)
        return
    if found.hits:
        click.echo(HEADER + ("date        " if by_date else "") + "path")
        for hit in found.hits:
            day = f"{hit.date[:10]}  " if by_date else ""
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {_percent(hit.itm)}  {day}{shown_path(hit.path)}")
    checked = (f"checked all {summary['checked']:,}" if summary["stopped"] == "all" else
               f"checked the {summary['checked']:,} closest of {summary['searched']:,}")
    share = f"{round(100 * summary['min_match'])}%"
    if found.hits:
        word = "photo matches" if len(found.hits) == 1 else "photos match"
        click.echo(f"{len(found.hits):,} {word} ({share} or more) · {checked}"
                   + (" (--max-check reached)" if summary["stopped"] == "max-check" else "") + ".", err=True)
        return
    click.echo(f"No photo matches {text!r} ({share} or more) · {checked}.", err=True)
    if found.others:
        click.echo("The closest photos checked:", err=True)
        _print_hits(found.others[:10], False, None)


def _warn_unsearchable(lib: Library) -> None:
    missing, images = lib.unsearchable()
    if missing:
        click.echo(f"Note: {missing} of {images} indexed images have no vector from this model yet "
                   "and can't be found (an interrupted `index --reindex`?): run that index command again "
                   "to finish.", err=True)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@_output_flags
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@_filter_options
@with_served_library
def similar(lib: Library, image: bytes, k: int, as_json: bool, paths_only: str | None, tag: str | None,
            filters: Filters) -> None:
    """Find the images that look most like IMAGE (any image file, indexed or not).

    \b
    Examples:
      blipsearch similar ~/Pictures/beach/IMG_0042.jpg -k 5
      blipsearch similar download.png --paths0 | xargs -0 ls -l
      blipsearch similar cat.jpg --folder ~/Pictures/2023"""
    _print_hits(lib.similar(image, k, filters=filters), as_json, paths_only)
    _warn_unsearchable(lib)


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=bytes))
@click.option("-k", "--top-k", "k", type=PositiveInt(), default=10, show_default=True, help="Number of results.")
@click.option("--rerank-depth", type=PositiveInt(0), default=DEFAULT_RERANK_DEPTH, show_default=True,
              help="Rerank this many of the best ITC texts with the ITM head (the image is encoded once).")
@click.option("--no-rerank", is_flag=True, help="Rank by ITC cosine only.")
@click.option("--source", type=click.Choice(["texts", "captions"]), default="texts", show_default=True,
              help="Match against the text collection, or the library's generated captions.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text per line.")
@with_served_library
def lookup(lib: Library, image: bytes, k: int, rerank_depth: int, no_rerank: bool, source: str,
           as_json: bool) -> None:
    """Find the texts that best describe IMAGE.

    \b
    Examples:
      blipsearch texts add product-descriptions.csv
      blipsearch lookup photo.jpg -k 3
      blipsearch lookup photo.jpg --source captions --json
    """
    hits = lib.lookup(image, k, rerank_depth=rerank_depth, rerank_hits=not no_rerank, source=source)
    if hits and not as_json:
        click.echo(HEADER + "text")
    for hit in hits:
        if as_json:
            _json_line(hit.to_dict())
        else:
            click.echo(f"{hit.rank:3d}  {hit.score:7.3f}  {_percent(hit.itm)}  {hit.text}")


def _human_size(size: int) -> str:
    """A file size in B, KB, MB or GB (powers of 1000, as file managers show them), 8 characters wide."""
    if size < 1000:
        return f"{size:6d} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if size < 999.95 * scale:  # what rounds to 1000.0 is shown in the next unit
            return f"{size / scale:5.1f} {unit}"
    return f"{size / 1e9:5.1f} GB"


@click.command()
@click.option("--threshold", type=Amount(0, strict=True), default=0.95, show_default=True,
              help="Least ITC cosine between two photos for them to count as copies (1.0: only identical "
                   "vectors; lower finds edits and crops, and sooner photos of the same scene).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per group per line.")
@click.option("--paths", "paths_only", flag_value="\n",
              help="Print only the copies after each group's best, one path per line (what you might move away).")
@click.option("-0", "--paths0", "paths_only", flag_value="\0", help="The same, each path ended by a NUL byte.")
@click.option("--tag", type=TEXT, metavar="LABEL", help="Only images tagged LABEL (see `index --tags`).")
@_filter_options
@with_existing_library
def duplicates(lib: Library, threshold: float, as_json: bool, paths_only: str | None, tag: str | None,
               filters: Filters) -> None:
    """Find photos that are copies of each other: the same shot resized, re-encoded, lightly cropped
    or byte for byte.

    Every pair of indexed photos whose ITC vectors reach --threshold joins a
    group; the best copy (most pixels, then largest file) comes first, byte-identical
    files are marked `same`. Nothing is changed or deleted. Output: per group, the
    best copy, then each other copy with its cosine to the best.

    \b
    Examples:
      blipsearch duplicates
      blipsearch duplicates --folder ~/Pictures/2024 --threshold 0.97
      blipsearch duplicates --paths0 | xargs -0 mv -t ~/possible-duplicates/
    """
    if threshold > 1:
        raise click.BadParameter("it is a cosine: at most 1.", param_hint="--threshold")
    groups = lib.duplicates(threshold, filters=filters)
    for group in groups:
        if paths_only:
            for copy in group.copies[1:]:
                _echo_path(copy.path, paths_only)
        elif as_json:
            _json_line(group.to_dict())
        else:
            click.echo(f"group {group.rank}: {len(group.copies)} photos")
            for n, copy in enumerate(group.copies):
                mark = "best" if n == 0 else "same" if copy.exact else f"{copy.similarity:.3f}"
                dims = f"{copy.width}x{copy.height}" if copy.width and copy.height else "?"
                click.echo(f"  {mark:>6}  {dims:>11}  {_human_size(copy.size)}  {shown_path(copy.path)}")
    if not paths_only and not as_json:
        photos = sum(len(g.copies) for g in groups)
        click.echo(f"{len(groups)} groups, {photos} photos, at cosine >= {threshold:g}" if groups else
                   f"No two photos reach cosine {threshold:g}.", err=True)
