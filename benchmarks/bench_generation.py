"""Benchmark 7 — generation-based edit evaluation: batched vs one prompt at a time.

`GenerationEvaluator.evaluate` (greedy, length-sorted batches of 32, left padding, KV cache,
finished rows leave the batch) vs Hugging Face `model.generate` on one unpadded prompt at a time
(greedy, same stop tokens and per-item bound), over every item of the records (edit prompt,
rephrase, portability, locality). Required: identical generated token ids for every item (up to
the first stop token) and identical answer texts. Goal >= 3x faster. Beside it, the cost of a
teacher-forced `EditEvaluator.evaluate` on the same records (what generation adds per record).

The model is the base plus a random delta on one block's MLP (a merge candidate); locality is
scored against the base model's own answers, computed once before timing. Real ZsRE records
(KnowEdit test file), a word-level tokenizer that knows all their words.

    python benchmarks/bench_generation.py               # 110M Qwen2-shaped model, 200 records
    python benchmarks/bench_generation.py --model smollm2  # SmolLM2-135M-Instruct, chat, 8 records
    python benchmarks/bench_generation.py --smoke-test  # tiny model, 10 records

`--model smollm2` (issue 28 section 2): SmolLM2-135M-Instruct offline through the product
(`fetch_smollm2`, `modeling.load_model`/`load_tokenizer`), the real tokenizer, records in chat
format, the WILD stop rules with max_new_tokens 64 (the product's default). Beside the batched and
one-at-a-time contenders it times the same batched evaluator with the old budget (each item at most
its target's token count + 4 tokens, `extra_new_tokens=4`, same stop rule), so the cost of the
longer budget is stated. The result goes to `generation_real.json` (the demo's `generation.json` stays).
"""

from __future__ import annotations

import common
import torch

GOAL_BATCHED = 3.0


@torch.no_grad()
def hf_generate_one(model, prompt_ids, max_new_tokens: int, stops: set[int], pad_id: int) -> list[int]:
    """One prompt through `model.generate` (greedy, no padding), cut before the first stop token."""
    ids = torch.tensor([list(prompt_ids)])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stops), pad_token_id=pad_id,
    )[0, ids.shape[1]:].tolist()
    return next((out[:k] for k, t in enumerate(out) if t in stops), out)


def one_at_a_time(model, evaluator, stops) -> list[list[int]]:
    """Every item of the evaluator, one `generate` call each, in the evaluator's item order, cut
    after the token that completes the evaluator's text stop ("." or newline; greedy decoding
    makes the tokens before it the same whether or not generation went on)."""
    out = []
    for it in evaluator.items:
        ids = hf_generate_one(model, it.prompt_ids, it.max_new_tokens, stops, evaluator.pad_id)
        out.append(next((ids[:k] for k in range(1, len(ids) + 1) if evaluator.text_stop.ended(ids[:k])), ids))
    return out


def check_identical(model, evaluator, stops, single: list[list[int]], metrics) -> dict:
    """Batched ids == one-at-a-time ids for every item; the evaluator's answers == their texts."""
    from mm4ke_ray.evaluate.generation import answer_text, greedy_generate

    items = evaluator.items
    batched = greedy_generate(model, [it.prompt_ids for it in items], [it.max_new_tokens for it in items],
                              stops, evaluator.pad_id, evaluator.batch_size, evaluator.text_stop)
    id_mismatches = sum(a != b for a, b in zip(batched, single, strict=True))
    texts = [answer_text(evaluator.tokenizer, ids, evaluator.stop) for ids in single]
    scored = {}
    for row in metrics.per_record:
        for metric, entries in row["items"].items():
            scored.setdefault(metric, []).extend(e["generated"] for e in entries)
    by_metric = {m: [t for it, t in zip(items, texts, strict=True) if it.metric == m] for m in scored}
    text_mismatches = sum(a != b for m in scored for a, b in zip(scored[m], by_metric[m], strict=True))
    return {"items": len(items), "id_mismatches": id_mismatches, "text_mismatches": text_mismatches,
            "generated_tokens": sum(map(len, single)),
            "prompt_tokens": sum(len(it.prompt_ids) for it in items),
            "mean_max_new_tokens": sum(it.max_new_tokens for it in items) / len(items),
            "distinct_answers": len(set(texts))}


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["demo", "smollm2"], default="demo",
                   help="demo: the Qwen2-shaped stand-in (default); smollm2: SmolLM2-135M-Instruct, chat")
    p.add_argument("--records", type=int, default=8, help="with --model smollm2: how many ZsRE records")
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.evaluate.generation import GenerationEvaluator, stop_token_ids
    from mm4ke_ray.merge import apply_delta_

    smoke = args.smoke_test
    real = args.model == "smollm2" and not smoke
    if real:
        n_records, repeats = args.records, 2
        records = common.zsre_records(n_records)
        model, tok, model_info = common.smollm2()
        layer, prompt_format = 6, "chat"
    else:
        shape = "tiny" if smoke else "110m"
        n_records, repeats = (10, 1) if smoke else (200, 2)
        records = common.zsre_records(n_records)
        tok = common.word_tokenizer(records)
        model = common.qwen2_model(shape)
        layer, prompt_format = common.SHAPES[shape]["layers"] // 2, "plain"
        model_info = {"shape": common.SHAPES[shape]}
    gen_eval = GenerationEvaluator(tok, records, prompt_format=prompt_format, batch_size=32)
    forced_eval = EditEvaluator(tok, records, prompt_format=prompt_format, batch_size=32)
    reference, forced_reference = gen_eval.base_generations(model), forced_eval.base_predictions(model)
    # The pre-WILD budget (target's tokens + 4), same stop rule: what the longer budget costs.
    old_eval = GenerationEvaluator(tok, records, prompt_format=prompt_format, batch_size=32,
                                   extra_new_tokens=4) if real else None
    old_reference = old_eval.base_generations(model) if real else None
    apply_delta_(model, common.one_layer_delta(model, layer, seed=1), alpha=0.0, sparsity=0.0)
    stops = stop_token_ids(tok, model)

    outputs: dict = {}  # each contender's last result, kept for the identity check

    def keep(name, fn):
        return lambda: outputs.__setitem__(name, fn())

    contenders = {
        "one_at_a_time": keep("single", lambda: one_at_a_time(model, gen_eval, stops)),
        "batched": keep("metrics", lambda: gen_eval.evaluate(model, reference)),
        "teacher_forced": lambda: forced_eval.evaluate(model, forced_reference),
    }
    if real:
        contenders["batched_old_budget"] = keep("old_metrics", lambda: old_eval.evaluate(model, old_reference))
    times = common.interleaved(contenders, repeats=repeats, warmup=0)  # a full pass needs no warm-up round
    metrics = outputs["metrics"]
    same = check_identical(model, gen_eval, stops, outputs["single"], metrics)
    speedup = common.ratio(times["one_at_a_time"], times["batched"])
    med = {k: common.statistics.median(v) for k, v in times.items()}
    per_record = {k: v / n_records for k, v in med.items()}
    print(f"{same['items']} items of {n_records} records: batched {med['batched']:.2f} s vs one at a time "
          f"{med['one_at_a_time']:.2f} s: {speedup:.2f}x; teacher-forced {med['teacher_forced']:.2f} s; "
          f"generation metrics {metrics.as_dict()}")
    goals = [
        common.goal_line("batched vs one-at-a-time generation (x)", speedup, GOAL_BATCHED),
        common.goal_line("generations differing (items)", same["id_mismatches"] + same["text_mismatches"], 0, False),
    ]
    extra = {}
    if real:
        old = outputs["old_metrics"]
        extra = {"batched_old_budget": common.summary(times["batched_old_budget"]),
                 "wild_vs_old_budget_cost": med["batched"] / med["batched_old_budget"],
                 "old_budget_rules": old_eval.rules(), "old_budget_generation_metrics": old.flat(),
                 "old_budget_mean_max_new_tokens": sum(it.max_new_tokens for it in old_eval.items)
                 / len(old_eval.items)}
        print(f"  batched, old budget (target + 4 tokens): {med['batched_old_budget']:.2f} s; the WILD budget "
              f"(64) costs {extra['wild_vs_old_budget_cost']:.2f}x; old-budget metrics {old.as_dict()}")
    common.write_result("generation_real" if real else "generation", args, {
        "model": {**model_info, "params": common.param_count(model)}, "prompt_format": prompt_format,
        "rules": gen_eval.rules(), **extra,
        "records": n_records, "data": str(common.ZSRE.name), "repeats": repeats, "batch_size": 32,
        "identical": same, "generation_metrics": metrics.flat(),
        "one_at_a_time": common.summary(times["one_at_a_time"]), "batched": common.summary(times["batched"]),
        "teacher_forced": common.summary(times["teacher_forced"]), "speedup": speedup,
        "seconds_per_record": per_record,
        "generation_vs_teacher_forced_cost": med["batched"] / med["teacher_forced"],
        "goals": goals,
    })
    if same["id_mismatches"] or same["text_mismatches"]:
        raise SystemExit(f"batched and one-at-a-time generations differ: {same}")


if __name__ == "__main__":
    main()
