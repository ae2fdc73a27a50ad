"""Candidates as a terminal table: one way to show a number wherever the product prints one.

A table never squeezes a number to nothing: the columns that matter (candidate, α, sparsity and
the three scores) always show; further columns join, in order, only while the whole table still
fits the terminal; `wide` shows them all at their natural width. Reference rows (the base model,
a pure R-SFT run) that are not on the front sit above a line, dimmed, apart from the front.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mm4ke_ray.schema import (
    ALPHA,
    BASE,
    EDIT_METRICS,
    FLUENCY,
    GEN_EDIT_METRICS,
    GEN_PREFIX,
    LAYER,
    LR,
    MERGE_PARAMS,
    PURE_RSFT,
    RETENTION_PREFIX,
    RSFT_PARAMS,
    WARM_START,
)

# Always shown, in this order, whatever the width.
CORE_COLUMNS = ("candidate", *MERGE_PARAMS, "edit_score", "general_score", "combined_score")
# Shown after the core ones while they fit (both metric families when a sweep computed both).
SECONDARY_COLUMNS = (
    *EDIT_METRICS[:1],
    *GEN_EDIT_METRICS[:1],
    "on_front",
    "kind",
    WARM_START,  # only when some rows came from an earlier sweep (--warm-start)
    LAYER,
    LR,
    *EDIT_METRICS[1:],
    *GEN_EDIT_METRICS[1:],
    *(p for p in RSFT_PARAMS if p not in (LAYER, LR)),  # threshold, steps, epochs
    "run_id",
)
LABELS = {
    ALPHA: "α",
    "edit_score": "edit",
    "general_score": "general",
    "combined_score": "combined",
    "edit_succ": "succ",
    "generalization": "gen'lz",
    "portability": "port",
    "locality": "local",
}
REFERENCE_KINDS = (BASE, PURE_RSFT)
REFERENCE_CAPTION = "above the line: references (base model, pure R-SFT), not on the front"
_NO_WRAP = ("candidate", "kind", "run_id")  # what a user copies into `export --pick`
_CELL_PAD = 3  # rich's default table: one space each side plus the vertical line


# Each edit number's family in its header (issue 23): "tf." teacher-forced token accuracy (the
# paper's tables), "wild." generated answers (WILD). Column keys (CSV, JSON, MLflow) stay as logged.
TF_LABEL, WILD_LABEL = "tf.", "wild."
FAMILY_CAPTION = ("tf.* = teacher-forced token accuracy (EasyEdit, the paper's tables); "
                  "wild.* = generated answers (WILD: greedy, stop at end of sentence, exact match)")
_PER_KIND = ("portability.", "locality.")
# Where lm-eval's numbers sit in a row (MLflow keys: `query.normalize_row`).
_GENERAL, _RETENTION, _STDERR = "general.", RETENTION_PREFIX.replace("/", "."), ".stderr"


def label(column: str) -> str:
    """A column's header: short names for the scores, the edit metrics behind their family's prefix."""
    if column.startswith(GEN_PREFIX):
        return WILD_LABEL + LABELS.get(column[len(GEN_PREFIX):], column[len(GEN_PREFIX):])
    if column in EDIT_METRICS or column.startswith(_PER_KIND):
        return TF_LABEL + LABELS.get(column, column)
    return LABELS.get(column, column)


def family_caption(edit_mode: str | None) -> str:
    """What the prefixes mean and which family the `edit` objective is computed from."""
    source = {"generation": "wild.*", "teacher-forced": "tf.*"}.get(edit_mode or "")
    return FAMILY_CAPTION + (f"; edit (the objective) is computed from {source}" if source else "")


def format_cell(value, missing: str = "-") -> str:
    """A metric or parameter as shown to people: floats to 4 significant digits, None as `missing`."""
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def column_cells(column: str, rows: list[dict]) -> list[str]:
    """`column` of `rows` in one format, so its numbers line up and compare at a glance: fixed
    point to 4 significant digits of the largest, or scientific when a value is tiny or huge."""
    floats = [abs(v) for r in rows if isinstance(v := r.get(column), float) and math.isfinite(v)]
    if not floats:
        return [format_cell(r.get(column)) for r in rows]
    top, small = max(floats), min((v for v in floats if v), default=0.0)
    if top >= 1e5 or 0 < small < 1e-3:
        fmt = "{:.2e}"
    else:
        fmt = "{:.%sf}".replace("%s", str(min(4, max(0, 3 - math.floor(math.log10(top)))))) if top else "{:.1f}"

    def cell(value) -> str:
        return fmt.format(value) if isinstance(value, float) and math.isfinite(value) else format_cell(value)

    return [cell(r.get(column)) for r in rows]


def _width(column: str, rows: list[dict]) -> int:
    return max([len(label(column)), *(len(c) for c in column_cells(column, rows))]) + _CELL_PAD


def _wide_order(column: str) -> tuple:
    """Where a column beyond the secondary ones sits in `--wide`: fluency, the per-kind means
    (teacher-forced, then generated), each general task's score, stderr and retention side by
    side, then the rest (timings) by name."""
    bare = column.removeprefix(GEN_PREFIX)
    if bare == FLUENCY:
        return (0, column)
    if bare.startswith(_PER_KIND):
        return (1, column.startswith(GEN_PREFIX), bare)
    if column.startswith((_GENERAL, _RETENTION)):
        task = column.removeprefix(_GENERAL).removeprefix(_RETENTION).removesuffix(_STDERR)
        return (2, task, column.startswith(_RETENTION), column.endswith(_STDERR))
    return (3, column)


def secondary_columns(edit_mode: str | None = None) -> tuple[str, ...]:
    """SECONDARY_COLUMNS with the edit objective's own family first: a sweep that optimises
    generated (WILD) scores shows `wild.succ` where a narrow terminal has room for one."""
    if edit_mode != "generation":
        return SECONDARY_COLUMNS
    own = GEN_EDIT_METRICS[:1]
    return (*own, *(c for c in SECONDARY_COLUMNS if c not in own))


def fitting_columns(rows: list[dict], width: int | None, wide: bool = False, edit_mode: str | None = None) -> list[str]:
    """The core columns, then secondary ones (present in `rows`) while the table fits `width`;
    with `wide` or no width, every numeric column (grouped by `_wide_order`, the run id last).
    `edit_mode`: the family the edit objective is computed from (`secondary_columns`)."""
    present = [c for c in (*CORE_COLUMNS, *secondary_columns(edit_mode)) if any(r.get(c) is not None for r in rows)]
    if wide or width is None:
        extra = [k for k in {k for r in rows for k in r} - set(present)
                 if any(isinstance(r.get(k), int | float) for r in rows)]
        last = [c for c in present if c == "run_id"]
        return [*(c for c in present if c not in last), *sorted(extra, key=_wide_order), *last]
    shown = [c for c in present if c in CORE_COLUMNS]
    used = 1 + sum(_width(c, rows) for c in shown)
    for c in present:
        if c in CORE_COLUMNS:
            continue
        if edit_mode == "generation" and c in EDIT_METRICS and GEN_PREFIX + c in present and GEN_PREFIX + c not in shown:
            continue  # a teacher-forced number only beside the generated one it is compared with
        w = _width(c, rows)
        if used + w <= width:
            shown.append(c)
            used += w
    return [c for c in present if c in shown]


def _has_edit_columns(columns: list[str]) -> bool:
    return any(c in EDIT_METRICS or c.startswith((GEN_PREFIX, *_PER_KIND)) for c in columns)


def _notes(references: list[dict] | None, columns: list[str], caption: str | None) -> list[str]:
    """What the line above the front means (with references) and `caption` (default
    `FAMILY_CAPTION` when an edit column is shown)."""
    if _has_edit_columns(columns):
        caption = caption or FAMILY_CAPTION
    return [text for text in (REFERENCE_CAPTION if references else None, caption) if text]


def candidate_table(rows: list[dict], title: str | None, width: int | None, wide: bool = False,
                    references: list[dict] | None = None, columns: list[str] | None = None,
                    caption: str | None = None, notes: bool = True, edit_mode: str | None = None) -> Table:
    """`references` (dimmed, above a line) then `rows`, in `columns` or those that fit `width`;
    with `notes`, `_notes` as the table's caption."""
    references = references or []
    every = [*references, *rows]
    columns = columns or fitting_columns(every, width, wide, edit_mode)
    captions = _notes(references, columns, caption) if notes else []
    table = Table(title=title, caption="\n".join(captions) or None)
    for c in columns:
        numeric = c not in _NO_WRAP
        table.add_column(label(c), no_wrap=True, justify="right" if numeric else "left")
    cells = list(zip(*(column_cells(c, every) for c in columns), strict=True))
    for i, row in enumerate(cells[:len(references)]):
        table.add_row(*row, style="dim", end_section=i == len(references) - 1)
    for row in cells[len(references):]:
        table.add_row(*row)
    return table


def column_groups(rows: list[dict], width: int, edit_mode: str | None = None) -> list[list[str]]:
    """Every column (`--wide`) as tables that each fit `width`: the columns that fit first, then
    the candidate column with as many of the rest as fit, and so on; no line wraps."""
    first = fitting_columns(rows, width, edit_mode=edit_mode)
    rest = [c for c in fitting_columns(rows, None, True, edit_mode) if c not in first]
    groups = [first]
    while rest:
        group, used = ["candidate"], 1 + _width("candidate", rows)
        while rest and (len(group) == 1 or used + _width(rest[0], rows) <= width):
            used += _width(rest[0], rows)
            group.append(rest.pop(0))
        groups.append(group)
    return groups


def print_table(rows: list[dict], title: str, wide: bool = False, references: list[dict] | None = None,
                console: Console | None = None, caption: str | None = None, edit_mode: str | None = None) -> None:
    """`rows` as a rich table fitted to the terminal (to 120 columns when piped); `caption` says
    what the edit columns' prefixes mean (default `FAMILY_CAPTION` when such a column is shown,
    with the objective's family when `edit_mode` names it, whose columns then come first)."""
    console = console or Console()
    if caption is None and edit_mode:
        caption = family_caption(edit_mode)
    width = console.width if console.is_terminal or console.record else 120
    if not console.is_terminal and not console.record:
        console = Console(width=width)
    every = [*(references or []), *rows]
    if wide:  # every column, in tables that each fit the width, the candidate repeated in each
        groups = column_groups(every, width, edit_mode)
        for i, columns in enumerate(groups):
            part = f" ({i + 1}/{len(groups)})" if len(groups) > 1 else ""
            console.print(candidate_table(rows, title + part if i == 0 else f"…{part}", width, True, references,
                                          columns, notes=False))
        for note in _notes(references, [c for group in groups for c in group], caption):  # once, under all parts
            console.print(f"[dim]{escape(note)}[/]")
        return
    table = candidate_table(rows, title, width, False, references, caption=caption, edit_mode=edit_mode)
    console.print(table)
    shown = {c.header for c in table.columns}
    left = [c for c in fitting_columns(every, None, True, edit_mode) if label(c) not in shown]
    if left:
        console.print(f"[dim]{escape(left_out_note([label(c) for c in left], width))}[/]")


def left_out_note(labels: list[str], width: int) -> str:
    """One line, within `width`, naming as many left-out columns as fit and how to see them all."""
    for n in range(len(labels), -1, -1):
        names = ", ".join(labels[:n]) + (", …" if n < len(labels) else "")
        note = f"{len(labels)} more column(s) left out to fit ({names}); --wide shows every column"
        if len(note) <= width or n == 0:
            return note
    return ""


def reference_rows(candidates: list[dict], front: list[dict]) -> list[dict]:
    """The base row and the best pure R-SFT row (by combined score), those of them not on `front`."""
    on = {r.get("candidate") for r in front}
    base = [r for r in candidates if r.get("kind") == BASE]
    pure = [r for r in candidates if r.get("kind") == PURE_RSFT]
    best_pure = max(pure, key=lambda r: r.get("combined_score") or float("-inf")) if pure else None
    return [r for r in (*base[:1], best_pure) if r is not None and r.get("candidate") not in on]


def counts_line(front: int, edited: int, failed: int | None = None, warm: int = 0) -> str:
    """The same count sentence for `pareto` and the sweep's summary: front size, candidates (`warm`
    of them from earlier sweeps, --warm-start), base."""
    tail = f", {failed} failed" if failed else ""
    earlier = f" ({warm} from earlier sweeps)" if warm else ""
    return f"{front} on the front of {edited} candidates{earlier} + the base model{tail}"


def executable(name: str) -> str:
    """`name` as a user can type it now: bare if the shell finds this venv's copy, else its full path."""
    here = Path(sys.executable).parent / name
    found = shutil.which(name)
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return name
    return str(here)


def print_command(console: Console, lead: str, command: str) -> None:
    """`lead` then `command` on one line, never wrapped, so it pastes whole into a shell."""
    console.print(f"{lead} {escape(command)}", soft_wrap=True, highlight=False)
