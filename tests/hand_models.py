"""Hand-built models for metric tests: a real Qwen2 whose next-token argmax is a lookup table,
and records whose metrics can be worked out by hand from two such tables (base and edited)."""

from __future__ import annotations

import torch

from mm4ke_ray.data import QA, EditRecord
from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer

# Records written so every metric below can be worked out by hand from two successor tables.
HAND_RECORDS = [
    EditRecord(
        prompt="the capital of france is",
        target_new="rome",
        rephrase_prompts=("france has capital", "capital of france"),
        portability=(
            QA("the pope lives in", "rome town", "Reasoning"),
            QA("italy has capital", "rome", "Reasoning"),
        ),
        locality=(QA("hamlet was written by", "william shakespeare", "Relation_Specificity"),),
        source="hand:0",
    ),
    EditRecord(
        prompt="spain has capital",
        target_new="madrid city",
        locality=(
            QA("grass looks", "green", "Relation_Specificity"),
            QA("the sea is", "blue", "Relation_Specificity"),
        ),
        source="hand:1",
    ),
]
# word -> the word the model predicts next; every other word predicts <pad>.
BASE_NEXT = {
    "is": "blue",
    "by": "william",
    "william": "shakespeare",
    "looks": "red",
    "capital": "madrid",
    "france": "paris",
    "in": "rome",
    "rome": "city",
    "madrid": "city",
}
EDITED_NEXT = {**BASE_NEXT, "is": "rome", "capital": "rome", "by": "smith", "william": "jones"}




def hand_tokenizer_for(records, *tables: dict[str, str]):
    """A word-level tokenizer knowing every word of `records` and of the successor `tables`."""
    words = [r.prompt + " " + r.target_new for r in records]
    words += [p for r in records for p in r.rephrase_prompts]
    words += [f"{qa.prompt} {qa.answer}" for r in records for qa in (*r.portability, *r.locality)]
    words += [" ".join([*t, *t.values()]) for t in tables]
    return build_word_tokenizer(words)


def lookup_qwen2(tokenizer, successor: dict[str, str], hidden: int = 48):
    """A real Qwen2 whose argmax after token a is successor[a] (else <pad>), exactly.

    Embeddings are one-hot, attention and MLP outputs are zeroed (so the residual stream keeps
    the one-hot vector), the final RMSNorm scales it by sqrt(hidden), and lm_head row b holds 1
    at column a for each a -> b: the winning logit is sqrt(hidden), every other one is 0.
    """
    vocab = len(tokenizer)
    assert vocab <= hidden, f"vocab {vocab} must fit in hidden {hidden} for one-hot embeddings"
    model = build_tiny_model("qwen2", vocab, hidden=hidden, layers=2)
    ids = tokenizer.convert_tokens_to_ids
    head = torch.zeros(vocab, hidden)
    for a in range(vocab):
        head[tokenizer.pad_token_id, a] = 1.0
    for a, b in successor.items():
        head[:, ids(a)] = 0.0
        head[ids(b), ids(a)] = 1.0
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(head)
    return model
