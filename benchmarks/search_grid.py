"""Run the search-quality grid once and cache every point (benchmarks/fixtures/search_grid.json).

Every R-SFT configuration of `search_world.GRID` is trained on the 4-layer demo world with the
product's library functions (`run_rsft`), and each delta is merged and evaluated at every
(α, sparsity) of `MERGE_GRID` by the sweep's own `CandidateEvaluator` (same metrics, same
objectives). No Ray: the point is the numbers, not the scheduling. The file is rewritten after
each configuration, and a rerun skips configurations already in it, so an interrupted run resumes.

    python benchmarks/search_grid.py            # the whole grid (~20 min on 2 shared cores)
    python benchmarks/search_grid.py --limit 2  # the first 2 configurations (timing probe)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import search_world

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "search_grid.json"


def _settings(assets):
    from mm4ke_ray.evaluate.candidate import EvalSettings

    # As search_spaces/demo.yaml: both local lm-eval tasks, every edit metric weighted 1.
    return EvalSettings(
        model=str(assets.model_dir), edits=str(assets.edits_path), batch_size=64,
        general_tasks=tuple(assets.task_names), task_include_path=str(assets.tasks_dir),
        edit_weights={"edit_succ": 1, "generalization": 1, "portability": 1, "locality": 1},
        combined_edit_weight=0.5,
    )


def _key(params: dict) -> str:
    return json.dumps({k: params[k] for k in search_world.RSFT_NAMES}, sort_keys=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=None, help="only the first N R-SFT configurations")
    p.add_argument("--out", type=Path, default=FIXTURE)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.data import load_edit_records
    from mm4ke_ray.demo.build import build_demo
    from mm4ke_ray.evaluate.candidate import CandidateEvaluator
    from mm4ke_ray.evaluate.scores import COMBINED, OBJECTIVES
    from mm4ke_ray.modeling import load_model, load_tokenizer
    from mm4ke_ray.rsft import DivergedError, RSFTConfig, run_rsft

    assets = build_demo(config=search_world.demo_config(), progress=print)
    settings = _settings(assets)
    evaluator = CandidateEvaluator(settings)
    tok = load_tokenizer(settings.model)
    model = load_model(settings.model)
    records = load_edit_records(settings.edits).records
    doc = json.loads(args.out.read_text()) if args.out.is_file() else None
    if doc is None or doc.get("grid") != search_world.GRID or doc.get("merge_grid") != search_world.MERGE_GRID:
        doc = {"world": {"demo_layers": search_world.DEMO_LAYERS, "demo_key": assets.manifest["key"]},
               "grid": search_world.GRID, "merge_grid": search_world.MERGE_GRID,
               "objectives": [o.name for o in OBJECTIVES], "seed": 0,
               "base": {k: evaluator.reference.metrics[k] for k in (*(o.name for o in OBJECTIVES), COMBINED.name)},
               "configs": []}
    done = {_key(c["params"]) for c in doc["configs"]}
    configs = search_world.rsft_grid()[: args.limit]
    start = time.perf_counter()
    for i, params in enumerate(configs):
        if _key(params) in done:
            continue
        t0 = time.perf_counter()
        entry = {"params": params}
        try:
            result = run_rsft(model, tok, records, RSFTConfig(**params, seed=0))
        except DivergedError as exc:
            entry.update(status="diverged", reason=str(exc), points=[])
        else:
            entry.update(status="ok", rsft_seconds=result.seconds, updates=result.updates, points=[])
            for m in search_world.merge_grid():
                metrics = evaluator.evaluate(result.delta, m["alpha"], m["sparsity"], seed=0)
                entry["points"].append({**m, **{k: metrics[k] for k in
                                                (*(o.name for o in OBJECTIVES), COMBINED.name)}})
        entry["seconds"] = time.perf_counter() - t0
        doc["configs"].append(entry)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(args.out)
        best = max((x["edit_score"] for x in entry["points"]), default=float("nan"))
        print(f"[{i + 1}/{len(configs)}] {params} {entry['status']} in {entry['seconds']:.1f} s "
              f"(best edit {best:.3f}; {time.perf_counter() - start:.0f} s so far)", flush=True)


if __name__ == "__main__":
    main()
