"""Benchmark 6 — memory: a merge-eval actor's RSS after 100 candidates vs after 1.

One `MergeEvalActor` (the sweep's actor: resident base model, apply / evaluate / restore per
candidate) on a local Ray, fed like a sweep feeds it: a new delta every 8 candidates (put in the
object store once, as a trial does), deltas on blocks 3, 6 and 9 in turn, α and sparsity drawn
per candidate. Its RSS (`stats()`) is read after candidate 1, 10, 25, 50 and 100. Goal: RSS after
100 within 5% of RSS after 1 (no model copies per candidate, no leak). Edit metrics only (20
ZsRE records; no lm-eval tasks), so the run is about the merge and evaluation paths.

    python benchmarks/bench_memory.py               # 110M Qwen2-shaped model, 100 candidates
    python benchmarks/bench_memory.py --smoke-test  # tiny model, 10 candidates
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import common

GOAL = 0.05
CANDIDATES_PER_DELTA = 8


def _proc_status(_actor_self) -> dict:
    """Runs inside the actor: its resident memory by kind (anonymous, file-backed, shared) in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=None, help="override the number of candidates")
    args = p.parse_args()
    common.setup(args)
    import ray

    from mm4ke_ray.demo.tiny import save_pretrained_pair
    from mm4ke_ray.evaluate.candidate import EvalSettings
    from mm4ke_ray.search.actors import MergeEvalActor

    smoke = args.smoke_test
    shape = "tiny" if smoke else "110m"
    n_candidates = args.candidates or (10 if smoke else 100)
    checkpoints = sorted({1, *(c for c in ([5, 10] if smoke else [10, 25, 50, 75, 100]) if c < n_candidates), n_candidates})
    n_layers = common.SHAPES[shape]["layers"]
    layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
    records = common.zsre_records(20)
    workdir = Path(tempfile.mkdtemp(prefix="mm4ke-bench-memory-"))
    model = common.qwen2_model(shape)
    model_dir = save_pretrained_pair(model, common.word_tokenizer(records), workdir / "model")
    settings = EvalSettings(model=str(model_dir), edits=str(common.ZSRE), limit=20, batch_size=32)
    common.start_local_ray("rb")
    rng = random.Random(0)
    rss, kinds = {}, {}
    try:
        actor = MergeEvalActor.options(num_cpus=1).remote(settings)
        start_rss = ray.get(actor.stats.remote())["rss_bytes"]
        delta_ref = None
        for i in range(n_candidates):
            if i % CANDIDATES_PER_DELTA == 0:
                layer = layers[(i // CANDIDATES_PER_DELTA) % len(layers)]
                delta_ref = ray.put(common.one_layer_delta(model, layer, seed=i))
            alpha, sparsity = round(rng.uniform(0, 0.8), 3), round(rng.uniform(0, 0.8), 3)
            ray.get(actor.evaluate.remote(delta_ref, alpha, sparsity))
            if i + 1 in checkpoints:
                rss[i + 1] = ray.get(actor.stats.remote())["rss_bytes"]
                kinds[i + 1] = ray.get(actor.__ray_call__.remote(_proc_status))
                print(f"after {i + 1:3d} candidates: RSS {rss[i + 1] / 2**20:.1f} MiB ("
                      + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in kinds[i + 1].items()) + ")")
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    growth = rss[n_candidates] / rss[1] - 1.0
    goals = [common.goal_line(f"RSS growth from candidate 1 to {n_candidates} (fraction)", growth, GOAL,
                              higher_is_better=False)]
    common.write_result("memory", args, {
        "model": {"shape": common.SHAPES[shape], "params": common.param_count(model),
                  "fp32_bytes": 4 * common.param_count(model)},
        "candidates": n_candidates, "candidates_per_delta": CANDIDATES_PER_DELTA, "delta_layers": layers,
        "records": 20, "rss_before_first_candidate": start_rss, "rss_bytes": rss, "rss_by_kind": kinds, "growth": growth,
        "goals": goals,
    })


if __name__ == "__main__":
    main()
