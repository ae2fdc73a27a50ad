"""`mm4ke-ray stream CONFIG`: lifelong editing in rounds (the config's `stream:` section).

Round t runs R-SFT from the model merged after round t-1 and merges into it; every round's
delta is kept (rebuild round t with `mm4ke-ray stream-export`), every round is evaluated
(this round's edits, all edits so far, locality against the base, general tasks) and logged
to MLflow with step = round; the retention curves are drawn to retention.png. `--resume` goes
on after the last round a killed run of the same stream kept in --out.
"""

from __future__ import annotations

from pathlib import Path

from mm4ke_ray.commands._common import check_out_dir, resolve_device
from mm4ke_ray.commands.sweep import add_verbose_argument, parse_overrides
from mm4ke_ray.config import load_config
from mm4ke_ray.errors import UserError
from mm4ke_ray.quiet import set_verbose

NAME = "stream"
HELP = ("Lifelong editing in rounds: R-SFT + merge per round from the previous round's merged model, "
        "retention curves over rounds in MLflow and a picture; every round's model can be exported.")


def add_arguments(p) -> None:
    p.add_argument("config", metavar="CONFIG", help="Sweep YAML with a `stream:` section and one value per "
                   "search.space parameter (or stream.per_round values for alpha/sparsity).")
    p.add_argument("--out", metavar="DIR", help="Stream folder: round deltas, stream.json, retention.png "
                   "(default: <storage_path>/<name>-stream).")
    p.add_argument("--force", action="store_true", help="Write into a non-empty --out (a stream there starts over).")
    p.add_argument("--resume", action="store_true", help="Go on after the last round a killed run of this same "
                   "stream kept in --out (its stream.json); refused for another stream's folder. An empty --out "
                   "starts from the base. With --tune: go on after the last finished trial of the tuning in --out "
                   "(its tune.json), a trial killed part-way after its last kept round.")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a config field, e.g. --set stream.rounds=5 (YAML value syntax).")
    p.add_argument("--tune", type=int, metavar="N", help="Tune the stream's settings instead: N streams with settings "
                   "Optuna draws from search.space (ranges allowed), objectives stream.objective's edit score over "
                   "rounds and the final general score; writes tune.json (trials, front, choice) beside the trials.")
    p.add_argument("--warm-start", metavar="TRACKING_URI:SWEEP", help="With --tune: try the best settings of this "
                   "one-round sweep of the same model first.")
    add_verbose_argument(p)


def run(args) -> int:
    config = load_config(args.config, parse_overrides(args.set))
    if args.warm_start and args.tune is None:
        raise UserError("--warm-start goes with --tune (it seeds the tuning with a one-round sweep's settings)")
    if args.resume and args.force:
        raise UserError("--resume goes on with the stream kept in --out and --force starts it over: give one of them")
    set_verbose(args.verbose)
    from mm4ke_ray.demo.resolve import resolve_demo  # torch: only when a stream runs
    from mm4ke_ray.stream.run import run_stream_config

    out = Path(args.out) if args.out else Path(config.storage_path) / f"{config.name}-stream"
    if args.resume and args.tune is not None:
        check_tuning_resumable(out)
    elif args.resume:
        check_resumable(out)
    else:
        check_out_dir(out, args.force)
    config, device = resolve_demo(config), resolve_device(args.device)
    if args.tune is not None:
        return _tune(config, out, device, args)
    outcome = run_stream_config(config, out, device=device, resume=args.resume)
    from mm4ke_ray.stream.curves import print_curve_table

    print_curve_table(outcome.result.curve_rows())
    print(f"wrote {outcome.folder} ({len(outcome.result.rounds)} rounds; picture {outcome.picture}); MLflow run "
          f"{outcome.run_id}; export round t with: mm4ke-ray stream-export {outcome.folder} --round T --out DIR")
    return 0


def check_resumable(out: Path) -> None:
    """With --resume: --out must be writable, and hold a stream's manifest unless it is empty."""
    from mm4ke_ray.stream.kept import MANIFEST

    check_out_dir(out, force=True)  # a file, or an unwritable place: refused as without --resume
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--resume: --out '{out}' is not empty but holds no {MANIFEST}, so there is no stream to "
                        "resume there (a stream killed before its base was evaluated kept nothing); choose another "
                        "--out, or pass --force instead of --resume to start over there")


def check_tuning_resumable(out: Path) -> None:
    """With --tune --resume: --out must be writable, and hold a tuning's tune.json unless it is empty."""
    from mm4ke_ray.stream.tune import TUNE_FILE

    check_out_dir(out, force=True)
    if out.is_dir() and any(out.iterdir()) and not (out / TUNE_FILE).is_file():
        raise UserError(f"--tune --resume: --out '{out}' is not empty but holds no {TUNE_FILE}, so there is no tuning "
                        "to resume there; choose another --out, or pass --force instead of --resume to start over")


def _tune(config, out: Path, device: str, args) -> int:
    from mm4ke_ray.stream.tune import tune_stream, warm_points

    warm = []
    if args.warm_start:
        from mm4ke_ray.tracking.query import load_sweep
        from mm4ke_ray.tracking.warm_sources import parse_spec

        uri, name = parse_spec(args.warm_start)
        sweep = load_sweep(uri, name)
        if sweep.params.get("model") != config.model.name:
            raise UserError(f"--warm-start {args.warm_start}: that sweep edited model {sweep.params.get('model')!r}, "
                            f"this stream {config.model.name!r}; warm start from a sweep of the same model")
        warm = warm_points(sweep.edited, config, most=max(1, args.tune // 2))
        print(f"warm start: {len(warm)} setting(s) of sweep {sweep.name} first")
    outcome = tune_stream(config, out, args.tune, device=device, warm=warm, resume=args.resume)
    choice = outcome.choice
    print(f"front: {[r['candidate'] for r in outcome.front]}; choice {choice['candidate']} {choice['params']} "
          f"(folder {choice['folder']}); export its round t with: mm4ke-ray stream-export {choice['folder']} "
          "--round T --out DIR")
    return 0
