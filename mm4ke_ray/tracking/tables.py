"""Candidates as a terminal table: one way to show a number wherever the product prints one."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# Names and run ids are what a user copies into `export --pick`: never wrapped.
_NO_WRAP = ("candidate", "kind", "run_id")


def format_cell(value, missing: str = "-") -> str:
    """A metric or parameter as shown to people: floats to 4 significant digits, None as `missing`."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict], columns: list[str], title: str) -> None:
    """`rows` as a rich table of `columns`, full width when piped (rich would cut it to 80)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, no_wrap=c in _NO_WRAP)
    for r in rows:
        table.add_row(*[format_cell(r.get(c)) for c in columns])
    console = Console()
    (console if console.is_terminal else Console(width=240)).print(table)
