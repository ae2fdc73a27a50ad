"""A stream's retention curves: a markdown table and a picture, from the metrics after each
round (round 0 = the base). Edit metrics are in percent, `general_score` in 0..1; both are
drawn on one 0..1 axis (percent / 100)."""

from __future__ import annotations

from pathlib import Path

# (metric, label), drawn in this order when measured: generated first (where the field's gap
# shows), then teacher-forced, then what the stream must not lose.
CURVES = (
    ("seen.gen.edit_succ", "generated edit success, all edits so far"),
    ("current.gen.edit_succ", "generated edit success, this round's edits"),
    ("round1.gen.edit_succ", "generated edit success, round 1's edits"),
    ("seen.edit_succ", "teacher-forced edit success, all edits so far"),
    ("gen.locality", "generated locality (vs base)"),
    ("locality", "teacher-forced locality (vs base)"),
    ("general_score", "general score (retention vs base)"),
)
# The three: edit success on all edits so far, locality, general score; generated where
# measured (keyed by that), teacher-forced otherwise.
KEY_CURVES = {True: ("seen.gen.edit_succ", "gen.locality", "general_score"),
              False: ("seen.edit_succ", "locality", "general_score")}
PERCENT_FREE = {"general_score", "edit_score", "combined_score"}  # already 0..1


def _unit(metric: str, value: float | None) -> float | None:
    if value is None:
        return None
    return value if metric in PERCENT_FREE else value / 100.0


def present_curves(per_round: list[dict]) -> list[tuple[str, str]]:
    """The `CURVES` some round measured."""
    return [(m, label) for m, label in CURVES if any(m in row for row in per_round)]


def curve_table(per_round: list[dict]) -> str:
    """Markdown: one row per round (0 = base), one column per measured curve, values 0..1."""
    curves = present_curves(per_round)
    head = "| round | " + " | ".join(m for m, _ in curves) + " |"
    rule = "|---|" + "---|" * len(curves)
    rows = []
    for t, row in enumerate(per_round):
        cells = [_unit(m, row.get(m)) for m, _ in curves]
        rows.append(f"| {t if t else '0 (base)'} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells)
                    + " |")
    return "\n".join([head, rule, *rows]) + "\n"


# Terminal headers (two lines each, so ten rounds of every curve fit 80 columns), and what they mean.
SHORT = {"seen.gen.edit_succ": "succ\nall", "current.gen.edit_succ": "succ\nnew", "round1.gen.edit_succ": "succ\nr1",
         "seen.edit_succ": "tf.succ\nall", "gen.locality": "local", "locality": "tf.local", "general_score": "general"}
SHORT_CAPTION = ("succ, local: generated answers (WILD); tf.*: teacher-forced; all: every edit so far, new: "
                 "this round's, r1: round 1's; locality vs the base; 0..1")


def print_curve_table(per_round: list[dict], console=None) -> None:
    """The curves as a terminal table (rich), at most 80 columns wide for every measured curve."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    curves = present_curves(per_round)
    table = Table(caption=SHORT_CAPTION, caption_justify="left")
    table.add_column("round", no_wrap=True)
    for metric, _ in curves:
        table.add_column(SHORT.get(metric, metric), justify="right", no_wrap=True)
    for t, row in enumerate(per_round):
        cells = [_unit(m, row.get(m)) for m, _ in curves]
        table.add_row("0 base" if t == 0 else str(t), *("-" if v is None else f"{v:.3f}" for v in cells))
    console.print(table)


def draw_retention(per_round: list[dict], path: str | Path, title: str = "retention over rounds",
                   extra: dict[str, list[dict]] | None = None, name: str = "this stream") -> Path:
    """PNG of the curves over rounds 0..T: every measured one for a single stream; with `extra`
    (other streams' rows by name, e.g. the paper's defaults beside a tuned setting) the issue's
    three (`KEY_CURVES`) per stream, one colour per curve and one line style per stream."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    streams = [(name, per_round), *(extra or {}).items()]
    curves = present_curves(per_round)
    if extra:
        generated = any(m == "seen.gen.edit_succ" for m, _ in curves)
        curves = [c for c in curves if c[0] in KEY_CURVES[generated]]
    fig = Figure(figsize=(9, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    for style, (_, rows) in zip(styles, streams, strict=False):
        for i, (metric, _) in enumerate(curves):
            points = [(t, _unit(metric, row.get(metric))) for t, row in enumerate(rows)]
            points = [(t, v) for t, v in points if v is not None]
            ax.plot([t for t, _ in points], [v for _, v in points], style, marker="o", markersize=3, color=f"C{i}")
    handles = [Line2D([], [], color=f"C{i}", marker="o", markersize=3, label=label)
               for i, (_, label) in enumerate(curves)]
    if extra:
        handles += [Line2D([], [], color="black", linestyle=style, label=stream)
                    for style, (stream, _) in zip(styles, streams, strict=False)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = base)")
    ax.set_ylabel("score (0..1)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path

