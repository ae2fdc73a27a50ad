"""bench_real's outputs: the JSON result, a Markdown table (the paper's Table 1 columns) and the
picture (the α and sparsity curves as the paper's Figures 2-3, the sweep's front beside them)."""

from __future__ import annotations

import math
from pathlib import Path

EDIT = ("edit_succ", "generalization", "portability", "locality")
SHORT = {"edit_succ": "Succ", "generalization": "Gen", "portability": "Port", "locality": "Loc"}
TABLE_ROWS = (("Base", "base"), ("SFT (τ 0)", "sft"), ("R-SFT", "rsft"), ("Merged α0.2 s0.2", "merged α0.2"),
              ("Merged α0.8 s0.2", "merged α0.8"))


def _num(value, digits: int = 1) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def objective_general(m: dict, tasks: list[str]) -> float:
    """The sweep's general score of a table row: the mean retention over the config's own tasks
    (the table scores more tasks, for information, than the objective counts)."""
    kept = [min(max(m.get(f"retention/{t}", math.nan), 0.0), 1.0) for t in tasks]
    return sum(kept) / len(kept) if kept else m["general_score"]


def _tasks(steps: dict) -> list[str]:
    names = set()
    for m in steps.values():
        names |= {k.removeprefix("retention/") for k in m if k.startswith("retention/")}
    return sorted(names)


def markdown(steps: dict, objective_tasks: list[str]) -> str:
    """The table: edit metrics of both families (percent), each task's score ± SE and retention,
    and the two objectives."""
    tasks = _tasks(steps)
    head = (["model"] + [f"TF {SHORT[m]}" for m in EDIT] + [f"gen {SHORT[m]}" for m in EDIT]
            + [f"{t} (ret.)" for t in tasks] + ["edit score", f"general ({'+'.join(objective_tasks)})"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [*TABLE_ROWS, *((k, k) for k in steps if k.startswith(("alpha=", "sparsity=")))]
    for label, key in rows:
        m = steps.get(key)
        if m is None:
            continue
        cells = [label] + [_num(m.get(x)) for x in EDIT] + [_num(m.get(f"gen.{x}")) for x in EDIT]
        for t in tasks:
            score, se, kept = m.get(f"general.{t}"), m.get(f"general.{t}.stderr"), m.get(f"retention/{t}")
            cells.append(f"{_num(score, 3)} ± {_num(se, 3)} ({_num(kept, 3)})")
        cells += [_num(m.get("edit_score"), 3), _num(objective_general(m, objective_tasks), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(steps: dict, tasks: list[str]) -> list[dict]:
    """The paper's three findings as goal rows: each holds when its measured difference is >= 0."""
    from common import goal_line

    out = []
    rsft, merged, sft = steps.get("rsft"), steps.get("merged α0.2"), steps.get("sft")
    if rsft and merged:
        out.append(goal_line("paper: merging restores general ability (general score, merged α0.2 s0.2 - R-SFT)",
                             objective_general(merged, tasks) - objective_general(rsft, tasks), 0.0))
    alpha = [objective_general(steps[k], tasks) for k in steps if k.startswith("alpha=")]
    sparsity = [objective_general(steps[k], tasks) for k in steps if k.startswith("sparsity=")]
    if len(alpha) > 1 and len(sparsity) > 1:
        out.append(goal_line("paper: sparsity matters less than scaling (general-score range along α - along "
                             "sparsity)", (max(alpha) - min(alpha)) - (max(sparsity) - min(sparsity)), 0.0))
    if rsft and sft:
        out.append(goal_line("paper: early stopping protects general ability (general score, R-SFT - SFT τ0)",
                             objective_general(rsft, tasks) - objective_general(sft, tasks), 0.0))
    return out


def picture(steps: dict, path: Path, tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, prefix, label in ((axes[0], "alpha=", "α (sparsity 0.2)"), (axes[1], "sparsity=", "sparsity (α 0.2)")):
        points = sorted((float(k.removeprefix(prefix)), m) for k, m in steps.items() if k.startswith(prefix))
        xs = [x for x, _ in points]
        for key, name, style in (("gen.edit_succ", "generated edit succ.", "o-"), ("edit_succ", "TF edit succ.", "o--"),
                                 ("gen.locality", "generated locality", "s-"), ("locality", "TF locality", "s--")):
            ax.plot(xs, [m.get(key, math.nan) / 100 for _, m in points], style, label=name)
        ax.plot(xs, [objective_general(m, tasks) for _, m in points], "^-", color="black", label="general score")
        ax.set_xlabel(label)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_title("Scaling the delta (paper Fig. 2)")
    axes[1].set_title("Sparsifying the delta (paper Fig. 3)")
    axes[0].legend(fontsize=8, loc="best")
    ax = axes[2]
    sweep = (steps.get("sweep") or {}).get("candidates") or []
    rows = [c for c in sweep if isinstance(c.get("edit_score"), (int, float))]
    if rows:
        front = [c for c in rows if c.get("on_front") in (True, "True", "true", 1)]
        ax.scatter([c["edit_score"] for c in rows], [c["general_score"] for c in rows], s=14, color="0.6",
                   label=f"sweep candidates ({len(rows)})")
        front.sort(key=lambda c: c["edit_score"])
        ax.plot([c["edit_score"] for c in front], [c["general_score"] for c in front], "o-", color="tab:red",
                label="sweep front")
    for label, key in TABLE_ROWS:
        m = steps.get(key)
        if m:
            ax.scatter([m["edit_score"]], [objective_general(m, tasks)], marker="*", s=90, label=label, zorder=3)
    ax.set_xlabel("edit score")
    ax.set_ylabel("general score")
    ax.set_title("Edit vs general: table rows and the sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(args, payload: dict, out: Path) -> None:
    from common import write_result

    steps, tasks = payload["steps"], list(payload["objective_tasks"])
    goals = findings(steps, tasks)
    write_result("real", args, {**payload, "goals": goals})
    (out / "real.md").write_text(markdown(steps, tasks) + "\n")
    picture(steps, out / "real.png", tasks)
    print(markdown(steps, tasks))
