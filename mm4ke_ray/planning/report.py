"""The plan as a readable table (rich, 80 columns) and as JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

WIDTH = 80


def duration(seconds: float) -> str:
    """8.4 s, 46 s, 4.2 min, 10.5 h, 1.3 d: short enough for a column, as precise as a plan is."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def render(plan: dict, console: Console | None = None) -> None:
    """Print `plan` (the JSON form of a `SweepPlan`) as tables that fit 80 columns."""
    console = console or Console(width=WIDTH)
    w, m, e = plan["workload"], plan["model"], plan["estimate"]
    where = f"{e['gpus']} GPU(s)" if e["gpus"] else f"{e['cpus']:g} CPU(s), no GPU"
    console.print(f"[bold]Plan for sweep {plan['name']}[/] on {where} ({plan['source']})")
    inputs = Table(show_header=False, box=None, pad_edge=False)
    inputs.add_column(style="dim")
    inputs.add_column(overflow="fold")
    inputs.add_row("model", f"{plan['model_name']}: {params(m['params'])} parameters, {m['layers']} layers, "
                            f"hidden {m['hidden']}")
    inputs.add_row("edits", f"{w['records']:,} records; E {w['epochs_mean']:g} (max {w['epochs_max']}), "
                            f"K {w['steps_mean']:g} (max {w['steps_max']}), layers {_layers(w['layers'])}")
    inputs.add_row("R-SFT", f"{w['updates_expected_per_trial']:,.0f} updates per trial expected, at most "
                            f"E·N·K = {w['updates_max_per_trial']:,}")
    inputs.add_row("trials", f"{w['trials']} x {w['candidates_per_delta']} candidates = {w['candidates']:,}; "
                             f"{w['concurrent_trials']} at once, {w['eval_actors']} merge-eval actor(s)")
    if w.get("halving_cost"):
        fewest, most = w["halving_cost"]
        inputs.add_row("halving", f"a delta's evaluation costs {fewest:.3g} to {most:.3g} full evaluations "
                                  f"({w['candidates_per_delta']} without halving), as its rungs prune; a "
                                  "promoted candidate scores only the items its next rung adds")
        for line in w.get("halving_rungs") or ():
            inputs.add_row("", line)
    tasks = ", ".join(w["general_tasks"]) or "none"
    limit = f" (limit {w['general_limit']})" if w["general_limit"] else ""
    inputs.add_row("general", tasks + limit)
    console.print(inputs)
    for line in plan.get("precision", []):
        console.print(f"[yellow]warning: {line}[/]")

    table = Table(title=None, show_lines=False, expand=False)
    table.add_column("phase")
    table.add_column("times", justify="right")
    table.add_column("each", justify="right")
    table.add_column("wall", justify="right")
    table.add_column("at most", justify="right")
    table.add_column("from")
    for p in e["phases"]:
        table.add_row(p["name"], _count(p["count"]), duration(p["each_s"]), duration(p["wall_s"]),
                      duration(p["upper_s"]), p["source"])
    table.add_section()
    table.add_row("[bold]sweep[/]", "", "", f"[bold]{duration(e['wall_s'])}[/]", duration(e["upper_wall_s"]), "")
    console.print(table)
    console.print(f"[dim]times: on the critical path ({w['concurrent_trials']} trial(s) at once, their candidates "
                  f"shared by {w['eval_actors']} actor(s)); at most: E·N·K updates at the costliest layer[/]")
    if e["gpus"]:
        console.print(f"GPU-hours: [bold]{e['billed_gpu_hours']:,.1f}[/] for {e['gpus']} GPUs over the sweep "
                      f"(at most {e['upper_billed_gpu_hours']:,.1f}); computing {e['busy_gpu_hours']:,.1f} "
                      f"(at most {e['upper_busy_gpu_hours']:,.1f})")
    else:
        console.print(f"GPU-hours: 0 (CPUs only); CPU-hours {e['cpu_hours']:,.2f}")
    console.print("[dim]Basis (bench: the sweep benchmark's demo sweeps on this machine):[/]")
    for line in e["basis"]:
        console.print(f"[dim]- {line}[/]")


def _layers(layers: list[int]) -> str:
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))
