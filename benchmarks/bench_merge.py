"""Benchmark 1 — merge a candidate: in place vs the naive file path.

Ours: `apply_delta_` (Top_p + scale of a one-layer MLP delta, added in place to the resident base
model) then `restore_` (copy the snapshot back). Naive (what gluing mergekit and an evaluation
harness does): build the full merged model (copy of the base + the same update),
`save_pretrained` to disk (safetensors), `from_pretrained` back for evaluation.
Both compute the same update (`prepare_delta`: magnitude sparsifier, same α and sparsity); a
check asserts the naive reloaded model's merged tensors equal ours bit for bit.

    python benchmarks/bench_merge.py               # 110M Qwen2-shaped model (goals: 50x, 100x)
    python benchmarks/bench_merge.py --smoke-test  # tiny model, seconds
"""

from __future__ import annotations

import copy
import shutil
import tempfile

import common
import torch

GOAL = 100.0  # issue 7, both sparsities
GOAL_SPARSE = 50.0  # issue 17: sparsity 0.2, with Top_p's selection close to one pass


def naive_candidate(base, delta, alpha, sparsity, workdir):
    """Merge the full model, write it, read it back: the file path of a naive pipeline."""
    from transformers import AutoModelForCausalLM

    from mm4ke_ray.merge import add_update_, prepare_delta

    merged = copy.deepcopy(base)
    add_update_(merged, prepare_delta(delta, alpha, sparsity))
    out = tempfile.mkdtemp(dir=workdir)
    merged.save_pretrained(out, safe_serialization=True)
    del merged
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    shutil.rmtree(out)
    return loaded


def ours_candidate(base, delta, alpha, sparsity):
    """Apply in place, (evaluation would run here), restore."""
    from mm4ke_ray.merge import apply_delta_, restore_

    snapshot = apply_delta_(base, delta, alpha=alpha, sparsity=sparsity)
    restore_(base, snapshot)


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    shape = "tiny" if args.smoke_test else "110m"
    repeats = 2 if args.smoke_test else 9
    model = common.qwen2_model(shape)
    layer = common.SHAPES[shape]["layers"] // 2
    delta = common.one_layer_delta(model, layer)
    alpha = 0.5
    workdir = tempfile.mkdtemp(prefix="mm4ke-bench-merge-")
    rows = {}
    try:
        _check_same_result(model, delta, alpha, 0.2, workdir)
        for sparsity in (0.2, 0.0):
            times = common.interleaved(
                {
                    "naive": lambda s=sparsity: naive_candidate(model, delta, alpha, s, workdir),
                    "ours": lambda s=sparsity: ours_candidate(model, delta, alpha, s),
                },
                repeats=repeats,
            )
            rows[f"sparsity={sparsity}"] = {
                "naive": common.summary(times["naive"]),
                "ours": common.summary(times["ours"]),
                "speedup": common.ratio(times["naive"], times["ours"]),
            }
            print(f"sparsity {sparsity}: naive {rows[f'sparsity={sparsity}']['naive']['median_s'] * 1e3:.1f} ms, "
                  f"ours {rows[f'sparsity={sparsity}']['ours']['median_s'] * 1e3:.2f} ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    limits = _limits(model, delta, repeats)
    naive_median = rows["sparsity=0.2"]["naive"]["median_s"]
    limits["best_possible_speedup_sparsity_0.2"] = naive_median / (limits["one_copy_s"] + limits["bracketed_selection_s"])
    limits["best_possible_speedup_sparsity_0"] = naive_median / limits["one_copy_s"]
    print("  limits: one copy of the delta's tensors {:.2f} ms, exact top-k selection {:.2f} ms, "
          "bracketed selection {:.2f} ms".format(1e3 * limits["one_copy_s"], 1e3 * limits["selection_s"],
                                                 1e3 * limits["bracketed_selection_s"]))
    goals = [common.goal_line("merge candidate speedup, sparsity 0.2 (x)", rows["sparsity=0.2"]["speedup"], GOAL_SPARSE),
             common.goal_line("merge candidate speedup, sparsity 0.2, issue 7's goal (x)",
                              rows["sparsity=0.2"]["speedup"], GOAL),
             common.goal_line("merge candidate speedup, sparsity 0 (x)", rows["sparsity=0.0"]["speedup"], GOAL)]
    common.write_result("merge", args, {
        "model": {"shape": common.SHAPES[shape], "params": common.param_count(model), "layer": layer,
                  "delta_entries": sum(t.numel() for t in delta.values())},
        "alpha": alpha, "method": "magnitude", "repeats": repeats, "results": rows, "limits": limits, "goals": goals,
    })


def _limits(model, delta, repeats) -> dict:
    """Two lower bounds of any exact in-place merge: one copy of the touched tensors (the
    snapshot that makes restore bit-exact) and finding Top_p's threshold: by a full selection
    (the exact k-th largest |Δ|, as before) and by the bracketed selection the sparsifier uses."""
    params = dict(model.named_parameters())
    touched = [params[n] for n in delta]
    buffers = [torch.empty_like(p) for p in touched]
    k = {n: int(0.8 * t.numel()) for n, t in delta.items()}

    def copy_once():
        for buf, p in zip(buffers, touched, strict=True):
            buf.copy_(p.detach())

    scores = {n: t.reshape(-1).abs() for n, t in delta.items()}

    def select():  # a full selection (NumPy introselect on CPU)
        from mm4ke_ray.merge.sparsify import _kth_largest

        for n, s in scores.items():
            _kth_largest(s, k[n])

    def bracketed():  # what the magnitude sparsifier runs on a CPU: sample, bracket, select
        from mm4ke_ray.merge.sparsify import _selection

        for n, s in scores.items():
            _selection(s, k[n])

    times = common.interleaved({"copy": copy_once, "select": select, "bracketed": bracketed},
                               repeats=max(3, repeats))
    return {"one_copy_s": min(times["copy"]), "selection_s": min(times["select"]),
            "bracketed_selection_s": min(times["bracketed"])}


def _check_same_result(model, delta, alpha, sparsity, workdir) -> None:
    """The naive file path and the in-place merge must give the same merged weights."""
    from mm4ke_ray.merge import apply_delta_, restore_

    loaded = naive_candidate(model, delta, alpha, sparsity, workdir)
    snapshot = apply_delta_(model, delta, alpha=alpha, sparsity=sparsity)
    try:
        ours = dict(model.named_parameters())
        theirs = dict(loaded.named_parameters())
        for name in delta:
            if not torch.equal(ours[name], theirs[name]):
                raise SystemExit(f"merge mismatch on {name}: the two paths disagree")
    finally:
        restore_(model, snapshot)


if __name__ == "__main__":
    main()
