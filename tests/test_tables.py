"""The CLI's one table printer: plain aligned text when piped, a rich table on a terminal."""

from __future__ import annotations

import io

from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from llmreel.cli.tables import plain_table, print_table


def test_plain_table_aligns_numbers_right_and_trims_trailing_space() -> None:
    text = plain_table(["name", "n"], [["a", "1"], ["longer", "100"]], numeric={"n"})
    assert text.split("\n") == ["name      n", "a         1", "longer  100"]


def test_piped_output_is_plain_text_with_the_footer_last() -> None:
    runner = CliRunner()
    with runner.isolation() as (out, _, _):
        print_table(["model", "cost"], [[Text("gpt-4o", style="bold"), "$1"]],
                    numeric={"cost"}, footer=[Text("total"), "$1"])  # fmt: skip
    assert out.getvalue().decode() == "model   cost\ngpt-4o    $1\ntotal     $1\n"


def test_terminal_output_is_a_rich_table_that_never_reads_markup() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)  # markup on, as by default
    print_table(["prompt", "n"], [["[bold]hi[/bold]", "3"]], numeric={"n"}, console=console)
    output = buffer.getvalue()
    assert "[bold]hi[/bold]" in output  # shown as typed, not styled
    assert "\x1b[" in output  # the header is styled
    assert "─" in output  # the rule under the header
