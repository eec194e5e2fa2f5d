"""Tables for the CLI: a rich table on a terminal, plain aligned text when piped.

Piped output has no borders, colour or escape codes, so it can be read, grepped and cut.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Cell", "plain_table", "print_table", "stdout_console"]

#: A table cell: styled text (the style shows on a terminal only) or a plain string.
Cell = Text | str


def stdout_console() -> Console:
    """A console on standard output that prints text as given (no markup, emoji or highlights).

    Make one per command, so that it writes to whatever sys.stdout is then (CliRunner, a pipe).
    """
    return Console(highlight=False, emoji=False, markup=False)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    *,
    numeric: Collection[str] = (),
    footer: Sequence[Cell] | None = None,
    console: Console | None = None,
) -> None:
    """Print `rows` under `columns`; `numeric` columns align right; `footer` is a totals row."""
    console = console if console is not None else stdout_console()
    if not console.is_terminal:
        plain = [[_plain(cell) for cell in row] for row in rows]
        if footer is not None:
            plain.append([_plain(cell) for cell in footer])
        click.echo(plain_table(columns, plain, numeric=numeric))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(_text(cell) for cell in row))
    if footer is not None:
        table.add_section()
        table.add_row(*(_text(cell) for cell in footer), style="bold")
    console.print(table)


def plain_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Collection[str] = ()
) -> str:
    """Space-aligned columns without borders or colour; `numeric` columns align right."""
    widths = [len(column) for column in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(columns), *rows]:
        cells = [
            cell.rjust(widths[i]) if columns[i] in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _text(cell: Cell) -> Text:
    # A plain string from the wire may hold "[bold]": never read it as markup.
    return cell if isinstance(cell, Text) else Text(cell)
