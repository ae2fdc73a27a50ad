"""Benchmark 3 — edit evaluation: batched vs one record at a time; prefix cache vs full forward.

Part A: `EditEvaluator.evaluate` (all prompts pre-encoded, length-sorted, right-padded batches,
head only at answer positions) vs EasyEdit's way (one unpadded forward per prompt with full
logits, `token_accuracy`; locality compared with the base model's argmax item by item). Same
metrics required (to 1e-6), and the same argmax at every answer position. Goal >= 3x faster.

Part B: a merge candidate of a delta on block L evaluated with the prefix cache warm (only blocks
>= L run) vs the full forward. Goal >= 0.9 of the ideal N / (N - L).

The evaluated model is the base plus a random delta on one block's MLP (a merge candidate), on
real ZsRE records (KnowEdit test file) with a word-level tokenizer that knows all their words.

    python benchmarks/bench_eval.py               # 110M Qwen2-shaped model, 200 ZsRE records
    python benchmarks/bench_eval.py --smoke-test  # tiny model, 10 records
"""

from __future__ import annotations

import common
import torch

GOAL_BATCHED = 3.0
GOAL_CACHE_OF_IDEAL = 0.9


@torch.no_grad()
def _argmax_at_answer(model, tok, prompt: str, answer: str) -> torch.Tensor:
    from mm4ke_ray.modeling import encode_example

    enc = encode_example(tok, prompt, answer, "plain")
    logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    return logits[enc.answer_start - 1 : -1].argmax(-1)


def one_at_a_time_locality_reference(base, tok, records) -> list[list[torch.Tensor]]:
    """The base model's argmax at each locality item's answer positions, item by item."""
    return [[_argmax_at_answer(base, tok, qa.prompt, qa.answer) for qa in r.locality] for r in records]


def one_at_a_time_metrics(model, tok, records, loc_reference) -> dict:
    """EasyEdit's loop: one record, one prompt, one forward at a time; same definitions."""
    from mm4ke_ray.evaluate.accuracy import token_accuracy

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    per = {"edit_succ": [], "generalization": [], "portability": [], "locality": []}
    model.eval()
    for r, loc_ref in zip(records, loc_reference, strict=True):
        per["edit_succ"].append(100.0 * token_accuracy(model, tok, r.prompt, r.target_new))
        gen = [100.0 * token_accuracy(model, tok, p, r.target_new) for p in r.rephrase_prompts]
        port = [100.0 * token_accuracy(model, tok, qa.prompt, qa.answer) for qa in r.portability]
        loc = [100.0 * (_argmax_at_answer(model, tok, qa.prompt, qa.answer) == ref).double().mean().item()
               for qa, ref in zip(r.locality, loc_ref, strict=True)]
        for name, items in (("generalization", gen), ("portability", port), ("locality", loc)):
            if items:
                per[name].append(mean(items))
    return {name: mean(values) for name, values in per.items()}


def _answer_argmax_one_at_a_time(model, tok, evaluator) -> torch.Tensor:
    """Argmax at every accuracy answer position, one prompt at a time, in the evaluator's order."""
    from mm4ke_ray.evaluate.edit_metrics import record_items
    from mm4ke_ray.modeling import encode_example

    out = []
    for rec in evaluator.records:
        for metric in ("edit_succ", "generalization", "portability"):
            for prompt, answer, _, _ in record_items(rec, metric):
                enc = encode_example(tok, prompt, answer, "plain")
                out.append(_argmax_at_answer(model, tok, prompt, answer)[: len(enc.answer_ids)])
    return torch.cat(out)


def part_a(model, base_snapshot_fn, tok, records, repeats):
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator

    evaluator = EditEvaluator(tok, records, batch_size=32)
    with base_snapshot_fn():  # the base model's references, computed once per sweep by both
        reference = evaluator.base_predictions(model)
        loc_ref = one_at_a_time_locality_reference(model, tok, records)
    batched = evaluator.evaluate(model, reference).as_dict()
    single = one_at_a_time_metrics(model, tok, records, loc_ref)
    diffs = {k: abs(batched[k] - single[k]) for k in single if single[k] is not None}
    with torch.no_grad():
        flat_batched = evaluator._predictions(model, evaluator._accuracy)
    flat_single = _answer_argmax_one_at_a_time(model, tok, evaluator)
    argmax_agree = float((flat_batched == flat_single).double().mean())
    if max(diffs.values()) > 1e-6 or argmax_agree != 1.0:
        raise SystemExit(f"batched and one-at-a-time disagree: {diffs}, argmax agreement {argmax_agree}")
    times = common.interleaved({
        "one_at_a_time": lambda: one_at_a_time_metrics(model, tok, records, loc_ref),
        "batched": lambda: evaluator.evaluate(model, reference),
    }, repeats=repeats)
    n_tokens = sum(int(b.attention_mask.sum()) for b in evaluator.accuracy_batches + evaluator.locality_batches)
    padded = sum(b.attention_mask.numel() for b in evaluator.accuracy_batches + evaluator.locality_batches)
    return {
        "metrics_batched": batched, "metrics_one_at_a_time": single, "max_abs_diff": max(diffs.values()),
        "answer_argmax_agreement": argmax_agree, "forwards_one_at_a_time": n_probes(records),
        "batches": len(evaluator.accuracy_batches) + len(evaluator.locality_batches),
        "tokens": n_tokens, "padding_fraction": 1 - n_tokens / padded,
        "one_at_a_time": common.summary(times["one_at_a_time"]), "batched": common.summary(times["batched"]),
        "speedup": common.ratio(times["one_at_a_time"], times["batched"]),
    }


def n_probes(records) -> int:
    return sum(1 + len(r.rephrase_prompts) + len(r.portability) + len(r.locality) for r in records)


def part_b(model, tok, records, layers, n_layers, repeats):
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.merge import apply_delta_, restore_

    full = EditEvaluator(tok, records, batch_size=32)
    cached = EditEvaluator(tok, records, batch_size=32, prefix_cache=True)
    reference = full.base_predictions(model)
    head_s = head_seconds(model, full, repeats)
    rows = {}
    for layer in layers:
        snapshot = apply_delta_(model, common.one_layer_delta(model, layer, seed=layer), alpha=0.0, sparsity=0.0)
        try:
            want = full.evaluate(model, reference)
            got = cached.evaluate(model, reference, first_layer=layer)  # also fills the cache
            if got.as_dict() != want.as_dict() or got.per_record != want.per_record:
                raise SystemExit(f"layer {layer}: cached metrics differ from the full forward's")
            times = common.interleaved({
                "full": lambda: full.evaluate(model, reference),
                "cached": lambda layer=layer: cached.evaluate(model, reference, first_layer=layer),
            }, repeats=repeats, warmup=0)
        finally:
            restore_(model, snapshot)
        speedup = common.ratio(times["full"], times["cached"])
        ideal = n_layers / (n_layers - layer)
        # The LM head at the answer positions runs in both paths; with it the bound on the
        # speedup is T_full / (T_head + (T_full - T_head) * (N - L) / N).
        t_full = common.statistics.median(times["full"])
        bound = t_full / (head_s + (t_full - head_s) * (n_layers - layer) / n_layers)
        rows[f"layer={layer}"] = {
            "layer": layer, "full": common.summary(times["full"]), "cached": common.summary(times["cached"]),
            "speedup": speedup, "ideal": ideal, "fraction_of_ideal": speedup / ideal,
            "head_s": head_s, "bound_with_head": bound, "fraction_of_bound_with_head": speedup / bound,
        }
        print(f"layer {layer}: cache speedup {speedup:.2f}x, ideal {ideal:.2f}x -> {speedup / ideal:.2f} of ideal "
              f"(bound with the LM head {bound:.2f}x -> {speedup / bound:.2f} of it)")
    return rows, cached.prefix_cache.nbytes


@torch.no_grad()
def head_seconds(model, evaluator, repeats: int) -> float:
    """Time of the final LM head at every answer position of one evaluation (hidden states given)."""
    batches = evaluator.accuracy_batches + evaluator.locality_batches
    finals = [model.model(input_ids=b.input_ids, attention_mask=b.attention_mask).last_hidden_state[b.predict_mask]
              for b in batches]
    times = common.interleaved({"head": lambda: [model.lm_head(h).argmax(-1) for h in finals]}, repeats=repeats)
    return common.statistics.median(times["head"])


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    common.setup(args)
    from contextlib import contextmanager

    from mm4ke_ray.merge import apply_delta_, restore_

    smoke = args.smoke_test
    shape = "tiny" if smoke else "110m"
    n_records, repeats = (10, 1) if smoke else (200, 3)
    n_layers = common.SHAPES[shape]["layers"]
    records = common.zsre_records(n_records)
    tok = common.word_tokenizer(records)
    model = common.qwen2_model(shape)
    layer = n_layers // 2
    # The evaluated model is a merge candidate: base + a delta on block `layer`.
    snapshot = apply_delta_(model, common.one_layer_delta(model, layer, seed=1), alpha=0.0, sparsity=0.0)

    @contextmanager
    def base_model():
        restore_(model, snapshot)
        try:
            yield
        finally:
            apply_delta_(model, common.one_layer_delta(model, layer, seed=1), alpha=0.0, sparsity=0.0)

    a = part_a(model, base_model, tok, records, repeats)
    restore_(model, snapshot)
    print(f"batched {a['batched']['median_s']:.2f} s vs one at a time {a['one_at_a_time']['median_s']:.2f} s: "
          f"{a['speedup']:.2f}x; metrics {a['metrics_batched']}, max diff {a['max_abs_diff']:.2g}")
    b_layers = [1, n_layers // 2, n_layers - 1] if smoke else [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
    b, cache_bytes = part_b(model, tok, records, b_layers, n_layers, repeats)
    goals = [
        common.goal_line("batched vs one-at-a-time evaluation (x)", a["speedup"], GOAL_BATCHED),
        common.goal_line("metrics identical (max abs diff, percent points)", a["max_abs_diff"], 1e-6, False),
        *[common.goal_line(f"prefix cache at L={r['layer']} of {n_layers} (fraction of ideal {r['ideal']:.2f}x)",
                           r["fraction_of_ideal"], GOAL_CACHE_OF_IDEAL) for r in b.values()],
    ]
    common.write_result("eval", args, {
        "model": {"shape": common.SHAPES[shape], "params": common.param_count(model)},
        "records": n_records, "data": str(common.ZSRE.name), "repeats": repeats, "batch_size": 32,
        "batched_vs_one_at_a_time": a, "prefix_cache": b, "prefix_cache_bytes": cache_bytes, "goals": goals,
    })


if __name__ == "__main__":
    main()
