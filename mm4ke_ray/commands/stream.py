"""`mm4ke-ray stream CONFIG`: lifelong editing in rounds (the config's `stream:` section).

Round t runs R-SFT from the model merged after round t-1 and merges into it; every round's
delta is kept (rebuild round t with `mm4ke-ray stream-export`), every round is evaluated
(this round's edits, all edits so far, locality against the base, general tasks) and logged
to MLflow with step = round; the retention curves are drawn to retention.png.
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
    p.add_argument("--force", action="store_true", help="Write into a non-empty --out.")
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
    set_verbose(args.verbose)
    from mm4ke_ray.demo.resolve import resolve_demo  # torch: only when a stream runs
    from mm4ke_ray.stream.run import run_stream_config

    out = Path(args.out) if args.out else Path(config.storage_path) / f"{config.name}-stream"
    check_out_dir(out, args.force)
    config, device = resolve_demo(config), resolve_device(args.device)
    if args.tune is not None:
        return _tune(config, out, device, args)
    outcome = run_stream_config(config, out, device=device)
    print(outcome.table, end="")
    print(f"wrote {outcome.folder} ({len(outcome.result.rounds)} rounds; picture {outcome.picture}); MLflow run "
          f"{outcome.run_id}; export round t with: mm4ke-ray stream-export {outcome.folder} --round T --out DIR")
    return 0


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
    outcome = tune_stream(config, out, args.tune, device=device, warm=warm)
    choice = outcome.choice
    print(f"front: {[r['candidate'] for r in outcome.front]}; choice {choice['candidate']} {choice['params']} "
          f"(folder {choice['folder']}); export its round t with: mm4ke-ray stream-export {choice['folder']} "
          "--round T --out DIR")
    return 0
