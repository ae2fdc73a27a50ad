"""Benchmark 14 — general evaluation per merge candidate: SharedContextHFLM vs lm-eval's HFLM.

lm-eval's HFLM runs each (context, choice) pair as its own sequence. SharedContextHFLM
(mm4ke_ray/evaluate/shared_context_lm.py) runs each context once with its choices packed after
it, and, inside `layers_below_unchanged(L)`, reuses the hidden states entering block L across the
candidates of one delta on block L. Three contenders per candidate, interleaved task by task:
`hflm` (lm-eval's own), `shared` (context once, no reuse) and `shared_reuse` (both).

Tasks: the product's real local tasks (`evaluate/real_tasks.py`: lm-eval's own `logiqa`, `sst2`
and `wikitext` YAMLs over the shared files): LogiQA (passage, question, lettered options; each
option's text is a choice after the long shared prompt), SST-2 (choices "negative"/"positive")
and WikiText-2 perplexity (`loglikelihood_rolling` over the first `max_words` words).

Candidates: base + α·Δ for a random Δ on the MLP of block L, a new α per round; the first round is
a warm-up (it also fills the reuse cache). Every round checks that each contender gives lm-eval's
HFLM per-document results: the same choice for every document, log-likelihoods within 1e-5
(per choice; per token for perplexity, whose document sums run into the thousands).

Goals: >= 2x HFLM per candidate (shared + reuse); identical per-document results; the reuse below
L as a fraction of its ideal N / (N - L) (>= 0.9, as the edit evaluation's prefix cache).

    python benchmarks/bench_general_eval.py                # SmolLM2-135M-Instruct (--model folder)
    python benchmarks/bench_general_eval.py --smoke-test   # tiny Qwen2, word tokenizer
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np

GOAL_SPEEDUP = 2.0
GOAL_LL_DIFF = 1e-5
GOAL_REUSE_OF_IDEAL = 0.9
GENERAL = common.SHARED / "data" / "general"
CONTENDERS = ("hflm", "shared", "shared_reuse")


def build_tasks(sizes: dict, out: Path) -> dict:
    """The product's real local tasks (lm-eval's own YAMLs over the shared files), built into `out`."""
    from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec, build_local_task, read_documents

    specs = [LocalTaskSpec("logiqa", str(GENERAL / "logiqa" / "Test.txt"), limit=sizes["logiqa"]),
             LocalTaskSpec("sst2", str(GENERAL / "test-SentimentAnalysis.tsv"), limit=sizes["sst2"]),
             LocalTaskSpec("wikitext", str(GENERAL / "wikitext-2" / "test.txt"), max_words=sizes["wikitext"])]
    texts = []
    for spec in specs:
        for doc in read_documents(spec):
            for value in doc.values():
                texts += value if isinstance(value, list) else [str(value)]
    return {"paths": [build_local_task(spec, out) for spec in specs], "texts": texts}


def load_model(args, texts):
    if args.smoke_test:
        from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer

        tok = build_word_tokenizer(texts)
        return build_tiny_model("qwen2", len(tok), hidden=64, layers=6, seed=0), tok, "tiny qwen2 (h64, 6 layers)"
    from mm4ke_ray.modeling import load_model as load_product_model
    from mm4ke_ray.modeling import load_tokenizer
    from mm4ke_ray.real.smollm2 import fetch_smollm2

    name = str(args.model or fetch_smollm2(say=print))  # a folder, or the project's cached SmolLM2 GGUF
    return load_product_model(name), load_tokenizer(name), f"SmolLM2-135M-Instruct ({name})"


def responses(full: dict, task: str) -> list[list[float]]:
    """Per document (in order), the log-likelihood of each of its requests."""
    samples = sorted(full["samples"][task], key=lambda s: s["doc_id"])
    return [[r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]] for s in samples]


def compare(got: dict, want: dict, task: str, tokens: list[int] | None) -> dict:
    """Largest log-likelihood difference (per token where `tokens` gives each doc's count) and
    the fraction of documents whose picked choice is the same."""
    diffs, ulps, same = [], [], []
    for i, (g, w) in enumerate(zip(responses(got, task), responses(want, task), strict=True)):
        scale = tokens[i] if tokens else 1
        diffs += [abs(a - b) / scale for a, b in zip(g, w, strict=True)]
        # in float32 steps of the value itself: a sum of magnitude >= 128 moves in steps of 1.5e-5
        ulps += [abs(a - b) / float(np.spacing(np.float32(max(abs(a), abs(b))))) for a, b in zip(g, w, strict=True)]
        same.append(max(range(len(g)), key=g.__getitem__) == max(range(len(w)), key=w.__getitem__))
    return {"max_abs_diff": max(diffs), "max_float32_steps": max(ulps), "same_choice": sum(same) / len(same)}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="full mode: a Hugging Face folder or .gguf (default: the SmolLM2 GGUF from the project's cache)")
    args = p.parse_args()
    common.setup(args)
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mm4ke_ray.evaluate.shared_context_lm import shared_context_hflm_class
    from mm4ke_ray.merge import apply_delta_, restore_
    from mm4ke_ray.modeling.layers import decoder_layers

    smoke = args.smoke_test
    sizes = {"logiqa": 4, "sst2": 8, "wikitext": 200} if smoke else {"logiqa": 6, "sst2": 24, "wikitext": 400}
    rounds = 2 if smoke else 4  # the first is the warm-up
    out = Path(tempfile.mkdtemp(prefix="mm4ke-bench-general-"))
    built = build_tasks(sizes, out)
    model, tok, model_name = load_model(args, built["texts"])
    n_layers = len(decoder_layers(model))
    layer = 2 if smoke else 6  # SmolLM2's edit layer in this project's recipes
    max_length = 512 if smoke else 1024
    manager = TaskManager(include_path=[str(p) for p in built["paths"]], include_defaults=False)
    tasks = {name: manager.load([name]) for name in sizes}
    lms = {"hflm": HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=max_length)}
    for name in ("shared", "shared_reuse"):
        lms[name] = shared_context_hflm_class()(pretrained=model, tokenizer=tok, batch_size=8, max_length=max_length)
    wiki = tasks["wikitext"]["tasks"]["wikitext"]
    wiki_tokens = [len(lms["hflm"].tok_encode(wiki.doc_to_target(doc))) for doc in wiki.eval_docs]
    delta = common.one_layer_delta(model, layer, seed=1, scale=2e-2)

    def run(name: str, task: str) -> dict:
        if name == "shared_reuse":
            with lms[name].layers_below_unchanged(layer):
                return evaluate(lm=lms[name], task_dict=tasks[task], bootstrap_iters=0, log_samples=True)
        return evaluate(lm=lms[name], task_dict=tasks[task], bootstrap_iters=0, log_samples=True)

    times = {task: {name: [] for name in CONTENDERS} for task in sizes}
    checks = {task: {name: [] for name in CONTENDERS[1:]} for task in sizes}
    for r in range(rounds):
        snapshot = apply_delta_(model, delta, alpha=0.2 * r, sparsity=0.0)  # a new candidate (alpha in [0, 1))
        try:
            for task in sizes:
                results = {}
                for name in CONTENDERS:
                    start = time.perf_counter()
                    results[name] = run(name, task)
                    if r:  # round 0 is the warm-up
                        times[task][name].append(time.perf_counter() - start)
                for name in CONTENDERS[1:]:
                    checks[task][name].append(compare(results[name], results["hflm"], task,
                                                      wiki_tokens if task == "wikitext" else None))
        finally:
            restore_(model, snapshot)
        print(f"round {r}: " + ", ".join(f"{t} {n} {times[t][n][-1]:.2f}s" for t in sizes for n in CONTENDERS
                                         if times[t][n]))
    per_candidate = {name: [sum(times[t][name][i] for t in sizes) for i in range(rounds - 1)] for name in CONTENDERS}
    speedup = common.ratio(per_candidate["hflm"], per_candidate["shared_reuse"])
    context_only = common.ratio(per_candidate["hflm"], per_candidate["shared"])
    reuse = common.ratio(per_candidate["shared"], per_candidate["shared_reuse"])
    ideal = n_layers / (n_layers - layer)
    max_diff = max(c["max_abs_diff"] for t in checks.values() for cs in t.values() for c in cs)
    same = min(c["same_choice"] for task in ("logiqa", "sst2") for cs in checks[task].values() for c in cs)
    per_task = {task: {
        "docs": sizes[task] if task != "wikitext" else f"{len(wiki_tokens)} ({sizes[task]} words)", **{name: common.summary(times[task][name]) for name in CONTENDERS},
        "speedup_shared": common.ratio(times[task]["hflm"], times[task]["shared"]),
        "speedup_shared_reuse": common.ratio(times[task]["hflm"], times[task]["shared_reuse"]),
        "reuse_speedup": common.ratio(times[task]["shared"], times[task]["shared_reuse"]),
        "checks": checks[task]} for task in sizes}
    for task, row in per_task.items():
        print(f"{task}: hflm {statistics.median(times[task]['hflm']):.2f}s, shared x{row['speedup_shared']:.2f}, "
              f"shared+reuse x{row['speedup_shared_reuse']:.2f}")
    goals = [
        common.goal_line(f"general evaluation per candidate vs lm-eval's HFLM (x; context once + reuse below L={layer})",
                         speedup, GOAL_SPEEDUP),
        common.goal_line("general evaluation: same choice as lm-eval's HFLM (fraction of documents)", same, 1.0),
        common.goal_line("general evaluation: max abs log-likelihood diff vs lm-eval (per choice; per token for "
                         "perplexity)", max_diff, GOAL_LL_DIFF, higher_is_better=False),
        common.goal_line(f"general evaluation: reuse below L={layer} of {n_layers} (fraction of ideal {ideal:.2f}x), "
                         "lm-eval tasks", reuse / ideal, GOAL_REUSE_OF_IDEAL),
    ]
    common.write_result("general_eval", args, {
        "model": {"name": model_name, "params": common.param_count(model), "layers": n_layers},
        "layer": layer, "max_length": max_length, "batch_size": 8, "rounds_timed": rounds - 1, "tasks": per_task,
        "per_candidate": {name: common.summary(v) for name, v in per_candidate.items()},
        "speedup_shared_reuse": speedup, "speedup_shared": context_only, "reuse_speedup": reuse, "reuse_ideal": ideal,
        "reuse_fraction_of_ideal": reuse / ideal, "prefix_cache_bytes": lms["shared_reuse"].prefix_cache.nbytes,
        "goals": goals,
    })


if __name__ == "__main__":
    main()
