"""`mm4ke-ray sweep CONFIG`: run a Ray Tune + Optuna sweep of R-SFT + merging.

`--resume FOLDER` continues a sweep whose driver died; `--replay-spool FILE` sends MLflow records
that a sweep kept on disk while the tracking server was away.
"""

from __future__ import annotations

from mm4ke_ray.config import MAX_TRIALS, SweepConfig, load_config
from mm4ke_ray.errors import UserError
from mm4ke_ray.quiet import set_verbose
from mm4ke_ray.strict_yaml import load_value

NAME = "sweep"
HELP = "Run a sweep: R-SFT trials (Ray Train) × merge candidates (actor pool), Optuna multi-objective, MLflow."


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG", nargs="?", help="Sweep YAML, e.g. search_spaces/demo.yaml.")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
    p.add_argument("--num-trials", type=int, help="Override search.num_trials.")
    p.add_argument("--smoke-test", action="store_true", help="4 trials × 3 candidates: a quick end-to-end check.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config field, e.g. --set search.seed=3 (YAML value syntax).")
    p.add_argument("--resume", metavar="FOLDER",
                   help="Continue an interrupted sweep from its folder (<storage_path>/<name>, printed at its start): "
                        "finished trials are kept, the rest run, logging goes on in the same MLflow run.")
    p.add_argument("--replay-spool", metavar="FILE",
                   help="Send MLflow records a sweep kept on disk while the tracking server was away "
                        "(the mlflow-spool.jsonl it named), then rebuild its Pareto artifacts.")
    p.add_argument("--tracking-uri", metavar="URI", help="With --replay-spool: send to this URI instead of the recorded one.")
    p.add_argument("--warm-start", action="append", default=[], metavar="TRACKING_URI:SWEEP",
                   help="Tell the study an earlier sweep's candidates before the first trial, and start the front "
                        "from its front (same model, edits and evaluation, checked by fingerprint); repeatable, "
                        "e.g. --warm-start sqlite:///runs/mlflow.db:my-sweep.")
    add_verbose_argument(p)


def add_verbose_argument(p) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="Show the libraries' own output (Ray workers, Tune, MLflow, lm-eval, progress bars).")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. search.seed=3")
        out[key.strip()] = load_value(value, f"--set {key.strip()}")
    return out


def _check_mode(args) -> str:
    modes = [m for m, on in (("config", args.config), ("resume", args.resume), ("replay", args.replay_spool)) if on]
    if len(modes) != 1:
        raise UserError("give exactly one of: CONFIG (a new sweep), --resume FOLDER, or --replay-spool FILE")
    mode = modes[0]
    if mode != "config" and (args.set or args.num_trials is not None or args.smoke_test or args.warm_start):
        raise UserError(f"--{mode.replace('replay', 'replay-spool')} continues what was recorded; "
                        "--set, --num-trials, --smoke-test and --warm-start apply to a new sweep only")
    if args.tracking_uri and mode != "replay":
        raise UserError("--tracking-uri goes with --replay-spool only (a sweep's URI is tracking.uri in its config)")
    return mode


def run(args) -> int:
    mode = _check_mode(args)
    set_verbose(args.verbose)  # before Ray, MLflow, transformers load: they read it at import
    if mode == "replay":
        from mm4ke_ray.tracking.mlflow_tracker import replay  # MLflow: only when replaying

        report = replay(args.replay_spool, args.tracking_uri)
        print(f"{report.path}: sent {report.sent} record(s) to {report.uri}; {report.rejected} refused"
              f"{' (see the .rejected.jsonl beside it)' if report.rejected else ''}; {report.left} still waiting")
        return 0 if report.left == 0 else 1
    if mode == "resume":
        # Ray, MLflow and torch load when a sweep runs, not for --help.
        from mm4ke_ray.search.driver import resume_sweep

        outcome = resume_sweep(args.resume, address=args.address)
    else:
        config = load_config(args.config, parse_overrides(args.set))
        if config.stream is not None:  # a sweep trial is one batch: it would drop the rounds silently
            raise UserError(f"{args.config}: has a `stream:` section; run it with `mm4ke-ray stream {args.config}` "
                            "(one setting) or `mm4ke-ray stream --tune N` (settings tuned for the stream)")
        outcome = start_sweep(config, source=args.config, address=args.address, num_trials=args.num_trials,
                              smoke_test=args.smoke_test, warm_start=args.warm_start)
    from mm4ke_ray.search.outcome import print_summary

    print_summary(outcome)
    return 0


def start_sweep(config: SweepConfig, *, source: str = "<config>", address: str | None = None,
                num_trials: int | None = None, smoke_test: bool = False, warm_start: list[str] | None = None):
    """A new sweep of `config` as the CLI starts it: the demo resolved (built once, cached), then
    `search.driver.run_sweep`; returns its `SweepOutcome`."""
    if num_trials is not None and not 1 <= num_trials <= MAX_TRIALS:  # 0 was once ignored silently
        raise UserError(f"--num-trials must be between 1 and {MAX_TRIALS}, got {num_trials}")
    from mm4ke_ray.demo.resolve import resolve_demo  # torch: only when a sweep runs
    from mm4ke_ray.search.driver import run_sweep

    return run_sweep(resolve_demo(config), source=source, address=address, num_trials=num_trials,
                     smoke_test=smoke_test, warm_start=warm_start or ())
