"""Edited facts the exported model answers, for its card: the first records of the edit set with
the answer the written model generates (greedy, the sweep's prompt format and stop rules)."""

from __future__ import annotations

from mm4ke_ray.evaluate.generation import GenerationEvaluator, answer_matches

EXAMPLES = 3
EXTRA_TOKENS = 8  # beyond the target's own length: room to see what the model says instead


def edit_examples(tokenizer, model, records, prompt_format: str, count: int = EXAMPLES) -> list[dict]:
    """[{prompt, target, generated, matches}] for the first `count` records' edit prompts;
    `matches`: the normalised answer equals the target (the generation metrics' default)."""
    gen = GenerationEvaluator(tokenizer, list(records[:count]), prompt_format=prompt_format, match="equals",
                              extra_new_tokens=EXTRA_TOKENS)
    items = [it for it in gen.items if it.metric == "edit_succ"]
    answers = gen.generate(model, items)
    return [{"prompt": it.prompt, "target": it.target, "generated": text,
             "matches": answer_matches(text, it.target, "equals")}
            for it, text in zip(items, answers, strict=True)]
