"""Pictures of a sweep's trade-off: a static PNG (matplotlib) and an interactive HTML (plotly).

Both plot every candidate with general ability kept on x and the edit score on y (both in
percent, higher is better, so the front is the upper-right edge), mark the front, the base model
and the pure R-SFT candidates (α = 0, sparsity = 0), and name the best candidate by combined
score. matplotlib is used through `Figure` + the Agg canvas, never `pyplot`, so no global
backend or figure state is touched in the sweep driver.
"""

from __future__ import annotations

from pathlib import Path

from mm4ke_ray.evaluate.pareto import ON_FRONT, best_candidate
from mm4ke_ray.evaluate.scores import COMBINED, EDIT, GENERAL
from mm4ke_ray.schema import BASE, EXTRA, PARAM_COLUMNS, PURE_RSFT, SAMPLED

# kind → (label, matplotlib marker, colour, size); drawn in this order, so base ends on top.
_STYLES = {
    EXTRA: ("extra merge candidate", "o", "#9ecae1", 36),
    SAMPLED: ("sampled by Optuna", "o", "#3182bd", 36),
    PURE_RSFT: ("pure R-SFT (α=0, sparsity=0)", "^", "#e6550d", 70),
    BASE: ("base model (unedited)", "*", "#000000", 220),
}
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


def axis_labels(rows: list[dict]) -> tuple[str, str]:
    """(x, y) axis titles with units; x says whether general ability is lm-eval retention or locality."""
    has_tasks = any(k.startswith("retention.") for r in rows for k in r)
    x = (
        "General ability kept (mean lm-eval retention, % of base model)"
        if has_tasks
        else "General ability kept (locality: % of base predictions unchanged)"
    )
    edit = (
        "Edit score (weighted mean of edit succ./generalization/portability"
        + ("/locality" if has_tasks else "")
        + ", %)"
    )
    return x, edit


def _xy(row: dict) -> tuple[float, float] | None:
    x, y = row.get(GENERAL.name), row.get(EDIT.name)
    if x is None or y is None:
        return None
    return 100.0 * x, 100.0 * y


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


def write_front_png(rows: list[dict], path: str | Path, title: str) -> Path:
    """Scatter of every candidate; the front ringed and joined by its staircase; base/pure R-SFT marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    kinds = [*_STYLES, *sorted({r.get("kind") for r in rows} - set(_STYLES) - {None})]
    for kind in kinds:
        label, marker, colour, size = _STYLES.get(kind, (str(kind), "s", "#756bb1", 36))
        pts = [p for p in (_xy(r) for r in rows if r.get("kind") == kind) if p is not None]
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
        ax.annotate(
            f"best combined: {best['candidate']}\n({COMBINED.name} {best[COMBINED.name]:.3f}, "
            f"α={best.get('alpha', float('nan')):.2f}, sparsity={best.get('sparsity', float('nan')):.2f})",
            (x, y),
            xytext=(10, -28),
            textcoords="offset points",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "#555555"},
            zorder=5,
        )
    xlabel, ylabel = axis_labels(rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
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
    fig.savefig(path)
    return Path(path)


def _hover(row: dict) -> str:
    lines = [f"<b>{row.get('candidate')}</b> ({row.get('kind')})"]
    params = [f"{k}={row[k]:g}" for k in PARAM_COLUMNS if isinstance(row.get(k), int | float)]
    if params:
        lines.append(", ".join(params))
    lines += [f"{k}: {row[k]:.4g}" for k in _HOVER_METRICS if isinstance(row.get(k), float)]
    lines += [
        f"{k}: {v:.4g}" for k, v in sorted(row.items()) if k.startswith(("general.", "retention."))
    ]
    if row.get("run_id"):
        lines.append(f"run {row['run_id']}")
    return "<br>".join(lines)


def write_front_html(rows: list[dict], path: str | Path, title: str) -> Path:
    """Interactive plotly version of the PNG; self-contained (plotly.js inlined, works offline)."""
    import plotly.graph_objects as go

    symbols = {BASE: "star", PURE_RSFT: "triangle-up"}
    fig = go.Figure()
    for kind in [*_STYLES, *sorted({r.get("kind") for r in rows} - set(_STYLES) - {None})]:
        label, _, colour, size = _STYLES.get(kind, (str(kind), "s", "#756bb1", 36))
        members = [r for r in rows if r.get("kind") == kind and _xy(r) is not None]
        if not members:
            continue
        xs, ys = zip(*map(_xy, members), strict=True)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=f"{label} ({len(members)})",
                text=[_hover(r) for r in members],
                hoverinfo="text",
                marker={
                    "color": colour,
                    "size": max(8, size**0.5 * 1.6),
                    "symbol": symbols.get(kind, "circle"),
                },
            )
        )
    front = [r for r in rows if r.get(ON_FRONT) and _xy(r) is not None]
    if front:
        xs, ys = _front_steps(front)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name="Pareto front",
                line={"color": "#d62728", "dash": "dash"},
                hoverinfo="skip",
            )
        )
        fx, fy = zip(*map(_xy, front), strict=True)
        fig.add_trace(
            go.Scatter(
                x=fx,
                y=fy,
                mode="markers",
                name=f"on the front ({len(front)})",
                text=[_hover(r) for r in front],
                hoverinfo="text",
                marker={
                    "size": 16,
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": "#d62728", "width": 2},
                },
            )
        )
    xlabel, ylabel = axis_labels(rows)
    fig.update_layout(
        title=title,
        xaxis_title=xlabel,
        yaxis_title=ylabel,
        template="plotly_white",
        hovermode="closest",
    )
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return Path(path)
