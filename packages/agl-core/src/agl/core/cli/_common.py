"""Pieces every `agl` command shares: the ``--store`` option, the store session that turns errors
into one line, ``KEY=JSON`` options, the console and its tables, and the formatting of times,
durations and statuses."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from pydantic_core import to_json
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from agl.core.errors import AglError
from agl.core.store import LightningStore, default_store_url, open_store
from agl.core.store.http import HttpLightningStore

T = TypeVar("T")
RETRY_SECONDS = 2.0
"""How long a command retries a store server it cannot reach: a person is waiting for the reason.
The client's own default (30 s, to outlast a server restart) is for programs."""

StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store URL: sqlite:///path.db, memory://, http://host:port. Default: $AGL_STORE, else sqlite:///.agl/store.db.",
        envvar="AGL_STORE",
        show_default=False,
        show_envvar=False,
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text.")]

STATUS_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "timeout": "red",
    "unresponsive": "red",
    "running": "cyan",
    "preparing": "cyan",
    "queuing": "blue",
    "requeuing": "blue",
}


def with_store(url: str | None, action: Callable[[LightningStore], Awaitable[T]]) -> T:
    """Open the store, run one async action on it and always close it.

    Any `AglError` (unknown ids, bad input, a malformed URL, a store that cannot be reached)
    becomes one line on stderr and exit status 1: a person at a terminal wants the reason, not a
    traceback.
    """

    async def session() -> T:
        store = open_store(url or default_store_url(), read_only=True)
        if isinstance(store, HttpLightningStore):
            store.retry_seconds = RETRY_SECONDS
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(session())
    except AglError as error:
        typer.echo(f"error: {one_line(str(error))}", err=True)
        raise typer.Exit(1) from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from the store (ids, span names: whatever an OTLP sender wrote) as a terminal shows it
    as written: a control character, such as the escape that starts a colour code or retitles the
    window, or a newline inside an id, becomes U+FFFD."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


def one_line(text: str) -> str:
    """`printable`, with each run of whitespace one space: a span's name or error is one line of its tree."""
    return printable(" ".join(text.split()))


def parse_option(text: str) -> tuple[str, Any]:
    """A repeatable ``KEY=JSON`` option as ``(key, value)``; a value that is not JSON is a bare string
    (``model=gpt-4o``), unless it opens as JSON's lists, objects and strings do: a typo there
    (``variants='[1, 2'``) would otherwise reach the algorithm as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option must be KEY=JSON, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as error:
        if value.lstrip().startswith(("[", "{", '"')):
            raise ValueError(f"option {key}: not JSON: {error}") from None
        return key, value


def console() -> Console:
    """A console for this command: on a terminal, colour at the terminal's width ($COLUMNS wins);
    otherwise plain text of unlimited width, so nothing piped or redirected is cut or wrapped
    (rich would take the width of a terminal on stdin, or 80 columns without one).

    Created per command, not at import, so it sees the stdout and $COLUMNS in effect now.
    Markup and emoji codes are off: names and prompts are user data, printed as they are.
    """
    out = Console(markup=False, emoji=False, highlight=False)
    if not out.is_terminal:
        out.width = sys.maxsize
    return out


def table() -> Table:
    """The house table: a rule under the header, two spaces between columns, nothing at the edges."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)


def add_id_column(rows: Table, header: str, ids: Iterable[str]) -> None:
    """A column of ids, as wide as the longest: an id is for copying, so never cut nor wrapped.
    Print its table with ``crop=False``: on a terminal too narrow even for the ids, the terminal
    then wraps the line where rich would cut it."""
    rows.add_column(header, no_wrap=True, min_width=max(map(len, ids), default=0))


def fit(out: Console, rows: Table, drop: Sequence[str], room: int = 0) -> Table:
    """``rows`` without the columns headed ``drop``, taken in that order, until it fits ``out``
    with ``room`` columns to spare: on a narrow terminal a missing column reads better than cut
    ones (piped, all fit)."""
    for header in drop:
        if Measurement.get(out, out.options.update_width(sys.maxsize), rows).maximum <= out.width - room:
            break
        rows.columns = [column for column in rows.columns if column.header != header]
    return rows


def print_json(data: Any) -> None:
    """Print straight to stdout, never through rich, so no line is ever wrapped. NaN and infinities
    (a memory store keeps them in span attributes) are null: ``json.dumps`` would write a bare
    ``NaN``, which JSON parsers other than Python's refuse."""
    typer.echo(to_json(data, indent=2, inf_nan_mode="null").decode())


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def format_time(timestamp: float | None, *, year: bool = True) -> str:
    """Local time to the second; ``-`` when unknown. Without the year where a table needs the room."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S" if year else "%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """Short and human: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def elapsed(start: float | None, end: float | None) -> str:
    return format_duration(end - start if start is not None and end is not None else None)


def format_ago(timestamp: float | None, now: float) -> str:
    return "-" if timestamp is None else f"{format_duration(max(now - timestamp, 0.0))} ago"


def short_json(value: Any, limit: int = 200) -> str:
    """Compact JSON, cut at ``limit`` characters: inputs can be whole conversations. `printable`:
    JSON escapes C0 controls but not C1 ones (U+009B starts a colour code, as ESC [ does)."""
    text = printable(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
