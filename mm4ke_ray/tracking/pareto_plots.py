"""Pictures of a sweep's trade-off: a static PNG (matplotlib) and an HTML page (inline SVG).

Both plot every candidate with general ability kept on x and the edit score on y (both in
percent, higher is better, so the front is the upper-right edge), mark the front, the base model
and the pure R-SFT candidates (α = 0, sparsity = 0), and name the best candidate by combined
score. Candidates below the sweep's minimums (`feasible` False) are drawn grey and are never on
the front nor the best pick. The edit axis names the metric family its score comes from
(`objectives.edit_mode`: teacher-forced or generation). matplotlib is used through `Figure` +
the Agg canvas, never `pyplot`, so no global backend or figure state is touched in the driver.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from mm4ke_ray.evaluate.pareto_front import FEASIBLE, ON_FRONT, best_candidate
from mm4ke_ray.evaluate.scores import COMBINED, EDIT, EDIT_STDERR, GENERAL, GENERAL_STDERR
from mm4ke_ray.schema import (
    BASE,
    EXTRA,
    GEN_PREFIX,
    GENERATION,
    PARAM_COLUMNS,
    PURE_RSFT,
    SAMPLED,
    TEACHER_FORCED,
    WARM_START,
)

# kind → (label, matplotlib marker, colour, size); drawn in this order, so base ends on top.
_STYLES = {
    EXTRA: ("extra merge candidate", "o", "#9ecae1", 36),
    SAMPLED: ("sampled by Optuna", "o", "#3182bd", 36),
    PURE_RSFT: ("pure R-SFT (α=0, sparsity=0)", "^", "#e6550d", 70),
    BASE: ("base model (unedited)", "*", "#000000", 220),
}
INFEASIBLE_COLOUR = "#bdbdbd"  # candidates below objectives.min_*: shown, but not pickable
WARM_COLOUR = "#31a354"  # a cross over candidates copied from an earlier sweep (--warm-start)
WARM_LABEL = "from an earlier sweep (--warm-start)"
INFEASIBLE_LABEL = "infeasible (below min_*)"
_HOVER_METRICS = (
    "edit_succ",
    "generalization",
    "portability",
    "locality",
    "fluency",
    EDIT.name,
    GENERAL.name,
    COMBINED.name,
)


def _infeasible(row: dict) -> bool:
    return row.get(FEASIBLE) is False


def edit_family(rows: list[dict], edit_mode: str | None = None) -> str:
    """The family the edit score comes from: `edit_mode` as the sweep recorded it; else
    teacher-forced unless the rows carry only generation metrics (`gen.*`)."""
    if edit_mode in (TEACHER_FORCED, GENERATION):
        return edit_mode
    keys = {k for r in rows for k in r}
    return GENERATION if "edit_succ" not in keys and GEN_PREFIX + "edit_succ" in keys else TEACHER_FORCED


def axis_labels(rows: list[dict], edit_mode: str | None = None) -> tuple[str, str]:
    """(x, y) axis titles with units; x says whether general ability is lm-eval retention or locality,
    y (two lines) which edit-metric family (teacher-forced or generation) the edit score is computed from."""
    has_tasks = any(k.startswith("retention.") for r in rows for k in r)
    generation = edit_family(rows, edit_mode) == GENERATION
    x = (
        "General ability kept (mean lm-eval retention, % of base model)"
        if has_tasks
        else "General ability kept (locality: % of base "
        + ("generated answers" if generation else "predictions")
        + " unchanged)"
    )
    family = "generation (greedy answers)" if generation else "teacher-forced (token accuracy)"
    metrics = ["edit succ.", "generalization", "portability", *(["locality"] if has_tasks else [])]
    prefix = GEN_PREFIX if generation else ""
    edit = f"Edit score, {family}, %\nweighted mean of {'/'.join(prefix + m for m in metrics)}"
    return x, edit


def _xy(row: dict) -> tuple[float, float] | None:
    x, y = row.get(GENERAL.name), row.get(EDIT.name)
    if x is None or y is None:
        return None
    return 100.0 * x, 100.0 * y


def _errors(row: dict) -> tuple[float, float]:
    """(x, y) half-widths of a point's error bars, in percent: one SE of each objective (0: unknown)."""
    se_x, se_y = row.get(GENERAL_STDERR), row.get(EDIT_STDERR)
    ok = [v if isinstance(v, int | float) and math.isfinite(v) else 0.0 for v in (se_x, se_y)]
    return 100.0 * ok[0], 100.0 * ok[1]


def _front_steps(front: list[dict]) -> tuple[list[float], list[float]]:
    """The staircase through the front points (the boundary of the region they dominate)."""
    pts = sorted((p for p in map(_xy, front) if p is not None), key=lambda p: (p[0], -p[1]))
    xs, ys = [], []
    for i, (x, y) in enumerate(pts):
        if i:
            xs.append(x)
            ys.append(pts[i - 1][1])
        xs.append(x)
        ys.append(y)
    return xs, ys


def write_front_png(rows: list[dict], path: str | Path, title: str, edit_mode: str | None = None) -> Path:
    """Scatter of every candidate; the front ringed and joined by its staircase; base/pure R-SFT
    marked; infeasible candidates grey (one legend entry); earlier sweeps' candidates crossed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kinds = [*_STYLES, *sorted({r.get("kind") for r in rows} - set(_STYLES) - {None})]
    for kind in kinds:
        label, marker, colour, size = _STYLES.get(kind, (str(kind), "s", "#756bb1", 36))
        pts = [p for p in (_xy(r) for r in rows if r.get("kind") == kind and not _infeasible(r)) if p is not None]
        if pts:
            ax.scatter(
                *zip(*pts, strict=True),
                marker=marker,
                c=colour,
                s=size,
                label=f"{label} ({len(pts)})",
                zorder=3,
                edgecolors="none",
            )
    bars = [(*_xy(r), *_errors(r)) for r in rows if _xy(r) is not None and any(_errors(r))]
    if bars:  # each point's SE on both axes: general ability (x) and edit score (y)
        x, y, ex, ey = zip(*bars, strict=True)
        ax.errorbar(x, y, xerr=ex, yerr=ey, fmt="none", ecolor="#969696", elinewidth=0.8, capsize=2, zorder=2.2,
                    label="±1 SE (edit score, general score)")
    greyed = [r for r in rows if _infeasible(r) and _xy(r) is not None]
    for kind in dict.fromkeys(r.get("kind") for r in greyed):  # each kind keeps its marker, greyed
        _, marker, _, size = _STYLES.get(kind, (str(kind), "s", "", 36))
        pts = [_xy(r) for r in greyed if r.get("kind") == kind]
        ax.scatter(*zip(*pts, strict=True), marker=marker, c=INFEASIBLE_COLOUR, s=size, zorder=2.5,
                   edgecolors="none")
    if greyed:  # one legend entry for them all
        ax.scatter([], [], marker="o", c=INFEASIBLE_COLOUR, s=36, label=f"{INFEASIBLE_LABEL} ({len(greyed)})")
    warm = [p for p in (_xy(r) for r in rows if r.get(WARM_START)) if p is not None]
    if warm:  # over whatever marker its kind has: an earlier sweep's point keeps its kind
        ax.scatter(*zip(*warm, strict=True), marker="x", c=WARM_COLOUR, s=30, linewidths=1.4, zorder=3.5,
                   label=f"{WARM_LABEL} ({len(warm)})")
    front = [r for r in rows if r.get(ON_FRONT)]
    if front:
        ax.plot(*_front_steps(front), color="#d62728", lw=1.2, ls="--", zorder=2)
        ax.scatter(
            *zip(*[_xy(r) for r in front], strict=True),
            s=140,
            facecolors="none",
            edgecolors="#d62728",
            linewidths=1.6,
            label=f"Pareto front ({len(front)})",
            zorder=4,
        )
    best = best_candidate(rows)
    if best is not None and _xy(best) is not None:
        x, y = _xy(best)
        # the label on the side of the point that faces the plot's centre, so it stays inside
        (x_lo, x_hi), (y_lo, y_hi) = ax.dataLim.intervalx, ax.dataLim.intervaly
        east, south = x < (x_lo + x_hi) / 2, y > (y_lo + y_hi) / 2
        ax.annotate(
            f"best combined: {best['candidate']}\n({COMBINED.name} {best[COMBINED.name]:.3f}, "
            f"α={best.get('alpha', float('nan')):.2f}, sparsity={best.get('sparsity', float('nan')):.2f})",
            (x, y),
            xytext=(10 if east else -10, -28 if south else 18),
            textcoords="offset points",
            ha="left" if east else "right",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "#555555"},
            zorder=5,
        )
    xlabel, ylabel = axis_labels(rows, edit_mode)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # below the plot, where it can cover neither a point nor the best candidate's label
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.text(
        0.99,
        0.99,
        "better ↗",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        color="#555555",
    )
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def _hover(row: dict) -> str:
    """A candidate's tooltip: name, parameters, metrics, run id (plain text lines)."""
    lines = [f"{row.get('candidate')} ({row.get('kind')})" + (f" - {INFEASIBLE_LABEL}" if _infeasible(row) else "")]
    if row.get(WARM_START):
        lines.append(f"from the earlier sweep {row[WARM_START]} (--warm-start)")
    params = [f"{k}={row[k]:g}" for k in PARAM_COLUMNS if isinstance(row.get(k), int | float)]
    if params:
        lines.append(", ".join(params))
    lines += [f"{k}: {row[k]:.4g}" for k in (*_HOVER_METRICS, EDIT_STDERR, GENERAL_STDERR)
              if isinstance(row.get(k), float)]
    lines += [
        f"{k}: {v:.4g}" for k, v in sorted(row.items())
        if k.startswith(("general.", "retention.", GEN_PREFIX)) and isinstance(v, int | float)
    ]
    if row.get("run_id"):
        lines.append(f"run {row['run_id']}")
    return "\n".join(lines)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    raw = (hi - lo) / n or 1.0
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _marker(kind: str, x: float, y: float, size: float, colour: str) -> str:
    r = max(3.5, size**0.5 / 1.6)
    if kind == BASE:  # a five-pointed star
        pts = [(x + (r * 1.6 if i % 2 == 0 else r * 0.7) * math.sin(i * math.pi / 5),
                y - (r * 1.6 if i % 2 == 0 else r * 0.7) * math.cos(i * math.pi / 5)) for i in range(10)]
        return f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" fill="{colour}"'
    if kind == PURE_RSFT:
        return (f'<polygon points="{x:.1f},{y - r * 1.2:.1f} {x - r:.1f},{y + r * 0.8:.1f} '
                f'{x + r:.1f},{y + r * 0.8:.1f}" fill="{colour}"')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}"'


def _html_legend(rows: list[dict], pts: list[tuple[dict, tuple[float, float]]]) -> list[tuple]:
    """(kind, text, colour, size) per legend entry of the HTML page, in drawing order."""
    kinds = [*_STYLES, *sorted({r.get("kind") for r in rows} - set(_STYLES) - {None})]
    legend = []
    for kind in kinds:
        label, _, colour, size = _STYLES.get(kind, (str(kind), "s", "#756bb1", 36))
        if shown := sum(1 for r, _ in pts if r.get("kind") == kind and not _infeasible(r)):
            legend.append((kind, f"{label} ({shown})", colour, size))
    if greyed := sum(1 for r, _ in pts if _infeasible(r)):
        legend.append((SAMPLED, f"{INFEASIBLE_LABEL} ({greyed})", INFEASIBLE_COLOUR, 36))
    if front := sum(1 for r, _ in pts if r.get(ON_FRONT)):
        legend.append(("front", f"Pareto front ({front})", "#d62728", 0))
    return legend


def write_front_html(rows: list[dict], path: str | Path, title: str, edit_mode: str | None = None) -> Path:
    """The PNG's plot as one self-contained HTML page: inline SVG, no script, no network.

    MLflow's artifact viewer shows HTML in a sandboxed iframe; an SVG whose points carry
    `<title>` tooltips needs neither scripts nor downloads there, and stays a few KB per point
    (plotly's inlined bundle was 4.6 MB and stayed blank in that viewer).
    """
    pts = [(r, _xy(r)) for r in rows if _xy(r) is not None]
    legend = _html_legend(rows, pts)
    # The legend sits in rows of two under the x-axis title, so a narrow frame (MLflow's artifact
    # viewer beside its assistant panel) scales the whole picture instead of clipping a column.
    legend_h = 22 * math.ceil(len(legend) / 2)
    w, h, left, right, top, bottom = 900, 600 + legend_h, 80, 20, 50, 70 + legend_h
    xs = [p[0] + sign * _errors(r)[0] for r, p in pts for sign in (-1, 1)] or [0.0, 100.0]  # error bars inside
    ys = [p[1] + sign * _errors(r)[1] for r, p in pts for sign in (-1, 1)] or [0.0, 100.0]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.05 or 1.0, (max(ys) - min(ys)) * 0.05 or 1.0
    x0, x1, y0, y1 = min(xs) - pad_x, max(xs) + pad_x, min(ys) - pad_y, max(ys) + pad_y

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (w - left - right)

    def sy(v: float) -> float:
        return h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
           f'style="max-width:{w}px;height:auto" font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>']
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{h - bottom}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{h - bottom + 16}" text-anchor="middle">{t:g}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
               'fill="none" stroke="#999"/>')
    xlabel, ylabel = axis_labels(rows, edit_mode)
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - bottom + 40}" text-anchor="middle">{escape(xlabel)}</text>')
    lines = "".join(f'<tspan x="0" dy="{13 * (i > 0)}">{escape(t)}</tspan>' for i, t in enumerate(ylabel.split("\n")))
    out.append(f'<text transform="translate(18 {(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="11">{lines}</text>')
    front = [(r, p) for r, p in pts if r.get(ON_FRONT)]
    if front:
        fx, fy = _front_steps([r for r, _ in front])
        line = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(fx, fy, strict=True))
        out.append(f'<polyline points="{line}" fill="none" stroke="#d62728" stroke-dasharray="6 4"/>')
    kinds = [*_STYLES, *sorted({r.get("kind") for r in rows} - set(_STYLES) - {None})]
    for kind in kinds:
        _, _, colour, size = _STYLES.get(kind, (str(kind), "s", "#756bb1", 36))
        for r, (a, b) in ((r, p) for r, p in pts if r.get("kind") == kind):
            ex, ey = _errors(r)
            if ex or ey:  # ±1 SE on both axes, under the marker
                out.append(f'<path class="se" d="M{sx(a - ex):.1f},{sy(b):.1f}H{sx(a + ex):.1f}'
                           f'M{sx(a):.1f},{sy(b - ey):.1f}V{sy(b + ey):.1f}" stroke="#969696"/>')
            ring = (f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="9" fill="none" stroke="#d62728" '
                    'stroke-width="1.6"/>' if r.get(ON_FRONT) else "")
            greyed = _infeasible(r)
            mark = _marker(kind, sx(a), sy(b), size, INFEASIBLE_COLOUR if greyed else colour)
            flag = ' data-feasible="false"' if greyed else ""
            out.append(f'<g class="point" data-candidate="{escape(str(r.get("candidate")))}"{flag}>{ring}'
                       f'{mark}><title>{escape(_hover(r))}</title>'
                       f'</{"polygon" if kind in (BASE, PURE_RSFT) else "circle"}></g>')
    for i, (kind, text, colour, size) in enumerate(legend):
        x, y = left + 10 + (w - left - right) / 2 * (i % 2), h - legend_h + 6 + 22 * (i // 2)
        # the base's star drawn smaller than in the plot, clear of its text
        mark = (f'<circle cx="{x:.1f}" cy="{y}" r="8" fill="none" stroke="{colour}" stroke-width="1.6"/>'
                if kind == "front" else f'{_marker(kind, x, y, min(size, 120), colour)}/>')
        out.append(f'{mark}<text class="legend" x="{x + 14:.1f}" y="{y + 4}" font-size="11">{escape(text)}</text>')
    best = best_candidate(rows)
    if best is not None and _xy(best) is not None:
        a, b = _xy(best)
        # inside the plot, on the side of the point that faces its centre
        east = sx(a) < (left + w - right) / 2
        lx, anchor = (sx(a) + 10, "start") if east else (sx(a) - 10, "end")
        ly = sy(b) + 22 if sy(b) < (top + h - bottom) / 2 else sy(b) - 14
        out.append(f'<text class="best-label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" font-size="11" '
                   f'fill="#333">best combined: {escape(str(best["candidate"]))} ({best[COMBINED.name]:.3f})</text>')
    out.append(f'<text x="{w - right}" y="{top - 8}" text-anchor="end" fill="#555">better ↗</text>')
    out.append("</svg>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + escape(title) + "</title>"
            "<style>body{margin:8px;font-family:sans-serif}.point:hover>*{stroke:#000;stroke-width:2}"
            "</style></head><body>\n" + "\n".join(out)
            + "\n<p style=\"font-size:12px;color:#555\">Hover a point for its parameters and metrics.</p>"
            "</body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
