"""Benchmark 8 — write a merged checkpoint: our tensor-wise merge vs `mergekit-yaml`, same ties merge.

The merge: base + (1 − α) · TopK(Δ, density) of a 110M Qwen2-shaped model (built from a config)
and a one-layer-MLP delta; for mergekit that is `ties` with one fine-tuned model (base + Δ),
`weight: 1 − α`, `density`, `normalize: false` (STACK-NOTES: without it one model's weight is
cancelled). Each side runs as a fresh process, as a user would run it, interpreter start and
imports included:
- ours: `merge_checkpoint` (mm4ke_ray/merge/checkpoint_merge.py) reading the R-SFT delta file;
- in memory: `build_merged` + `save_merged` (what `mm4ke-ray merge` did before), for reference;
- mergekit: `mergekit-yaml CONFIG OUT` from its own venv (benchmarks/.mergekit-venv, git-ignored:
  `python3 -m venv benchmarks/.mergekit-venv && benchmarks/.mergekit-venv/bin/pip install
  torch==2.13.0 mergekit==0.1.5`). Offline it may exit 1 after writing the model (a Hub call for
  its model card): a run counts when the weights and config were written, and the exit code is
  recorded. Without the venv, mergekit is skipped and the reason recorded.
A check compares the three outputs tensor by tensor before timing. The base is saved in 100 MB
shards; our first run also reports its peak RSS growth (after imports) against the goal
peak ≤ 1.2 × (largest shard + delta). In --smoke-test mode the tiny model's shards are smaller
than what a process loads once (~8 MB), so that ratio means nothing there.

    python benchmarks/bench_mergekit.py               # 110M, median of 3 (goal: ours >= 3x mergekit)
    python benchmarks/bench_mergekit.py --smoke-test  # tiny model, one run each
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import torch

GOAL = 3.0
ALPHA, SPARSITY = 0.5, 0.2
SHARD = "100MB"  # 110M float32 (438 MB): 5 shards
MEMORY_GOAL = 1.2  # peak RSS growth ≤ 1.2 × (largest shard + delta)
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", common.REPO / "benchmarks" / ".mergekit-venv" / "bin" / "mergekit-yaml"))

_OURS = """
import json, sys
from mm4ke_ray.delta import load_delta
from mm4ke_ray.merge.checkpoint_merge import merge_checkpoint

def status(key):  # bytes, from /proc/self/status (Linux)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak := current RSS, after the imports
before = status("VmRSS")
delta, meta = load_delta(sys.argv[2])
merge_checkpoint(sys.argv[1], sys.argv[3], delta, alpha=float(sys.argv[4]), sparsity=float(sys.argv[5]))
print(json.dumps({"rss_before": before, "rss_peak": status("VmHWM")}))
"""
_IN_MEMORY = """
import sys
from mm4ke_ray.merge import build_merged, save_merged
r = build_merged(sys.argv[1], delta_dir=sys.argv[2], alpha=float(sys.argv[4]), sparsity=float(sys.argv[5]))
save_merged(r.model, sys.argv[1], sys.argv[3], r.info)
"""


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(common.REPO)}


def _run(cmd: list[str], out: Path, accept_rc_1: bool = False) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800)
    written = (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    if proc.returncode != 0 and not (accept_rc_1 and proc.returncode == 1 and written):
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    if not written:
        raise SystemExit(f"{' '.join(cmd[:3])} wrote no model to {out}")
    return {"rc": proc.returncode, "stdout": proc.stdout,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def _mergekit_config(base: Path, sft: Path, path: Path) -> Path:
    cfg = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(sft), "parameters": {"weight": 1 - ALPHA, "density": 1 - SPARSITY}}],
        "parameters": {"normalize": False},
        "dtype": "float32",
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _compare(ours: Path, other: Path, delta: dict, base: dict) -> dict:
    """Untouched tensors must be equal; the delta's agree to rounding (and TopK tie order)."""
    a, b = _tensors(ours), _tensors(other)
    shared = sorted(set(a) & set(b))
    untouched_diff = [n for n in shared if n not in delta and not torch.equal(a[n], b[n])]
    max_abs, mask_agreement = 0.0, []
    for n in delta:
        max_abs = max(max_abs, float((a[n] - b[n]).abs().max()))
        mask_agreement.append(float(((a[n] != base[n]) == (b[n] != base[n])).float().mean()))
    if untouched_diff:
        raise SystemExit(f"{other.name}: untouched tensors differ, e.g. {untouched_diff[:3]}")
    return {"tensors_compared": len(shared), "delta_max_abs_diff": max_abs,
            "delta_kept_mask_agreement_min": min(mask_agreement),
            "only_in_ours": sorted(set(a) - set(b))[:5], "only_in_other": sorted(set(b) - set(a))[:5]}


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    shape = "tiny" if args.smoke_test else "110m"
    repeats = 1 if args.smoke_test else 3
    model = common.qwen2_model(shape)
    layer = common.SHAPES[shape]["layers"] // 2
    delta = common.one_layer_delta(model, layer)
    work = Path(tempfile.mkdtemp(prefix="mm4ke-bench-mergekit-"))
    try:
        base_dir, sft_dir = work / "base", work / "sft"
        # Sharded, as real checkpoints are: the memory goal is about the largest shard.
        model.save_pretrained(base_dir, safe_serialization=True, max_shard_size=SHARD)
        base_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        params = common.param_count(model)
        with torch.no_grad():
            for name, d in delta.items():
                model.get_parameter(name).add_(d)
        model.save_pretrained(sft_dir, safe_serialization=True)
        del model
        from mm4ke_ray.delta import save_delta

        delta_dir = save_delta(work / "delta", delta)
        py = sys.executable
        tail = [str(ALPHA), str(SPARSITY)]
        contenders = {
            "ours": lambda: _run([py, "-c", _OURS, str(base_dir), str(delta_dir), str(work / "ours"), *tail], work / "ours"),
            "in_memory": lambda: _run([py, "-c", _IN_MEMORY, str(base_dir), str(delta_dir), str(work / "in_memory"), *tail],
                                      work / "in_memory"),
        }
        skipped = None
        if MERGEKIT.is_file():
            cfg = _mergekit_config(base_dir, sft_dir, work / "ties.yaml")
            contenders["mergekit"] = lambda: _run([str(MERGEKIT), str(cfg), str(work / "mergekit")], work / "mergekit",
                                                  accept_rc_1=True)
        else:
            skipped = f"mergekit not installed ({MERGEKIT} missing; see this script's docstring)"
            print(f"  skipped mergekit: {skipped}")
        runs = {name: fn() for name, fn in contenders.items()}  # one untimed run each, then the check
        checks = {name: _compare(work / "ours", work / name, delta, base_state) for name in contenders if name != "ours"}
        times = common.interleaved(contenders, repeats=repeats, warmup=0)
        rows = {name: common.summary(t) for name, t in times.items()}
        for name, row in rows.items():
            print(f"  {name}: {row['median_s']:.2f} s (median of {repeats})")
        goals = []
        if "mergekit" in times:
            rows["speedup_vs_mergekit"] = common.ratio(times["mergekit"], times["ours"])
            goals.append(common.goal_line("tensor-wise merge vs mergekit-yaml, same ties merge (x)",
                                          rows["speedup_vs_mergekit"], GOAL))
        rows["speedup_vs_in_memory"] = common.ratio(times["in_memory"], times["ours"])
        print(f"  ours vs in memory: {rows['speedup_vs_in_memory']:.2f}x")
        rss = json.loads(runs["ours"]["stdout"].strip().splitlines()[-1])
        shards = sorted(base_dir.glob("*.safetensors"))
        memory = {**rss, "growth": rss["rss_peak"] - rss["rss_before"], "shards": len(shards),
                  "largest_shard": max(f.stat().st_size for f in shards),
                  "delta_bytes": sum(t.numel() * t.element_size() for t in delta.values())}
        memory["growth_over_shard_plus_delta"] = memory["growth"] / (memory["largest_shard"] + memory["delta_bytes"])
        goals.append(common.goal_line("tensor-wise merge peak RSS growth / (largest shard + delta)",
                                      memory["growth_over_shard_plus_delta"], MEMORY_GOAL, higher_is_better=False))
        common.write_result("mergekit", args, {
            "model": {"shape": common.SHAPES[shape], "params": params,
                      "layer": layer, "delta_entries": sum(t.numel() for t in delta.values()),
                      "checkpoint_bytes": sum(f.stat().st_size for f in base_dir.glob("*.safetensors"))},
            "alpha": ALPHA, "sparsity": SPARSITY, "repeats": repeats, "mergekit": str(MERGEKIT),
            "mergekit_skipped": skipped, "exit_codes": {n: r["rc"] for n, r in runs.items()},
            "mergekit_stderr_tail": runs.get("mergekit", {}).get("stderr_tail"),
            "checks": checks, "results": rows, "memory": memory, "goals": goals,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
