"""Pretrain the demo's tiny Qwen2 on a generated world, and measure fact-level accuracy.

Recipe from the feasibility run (DESIGN §5): hidden 128, 2 layers, intermediate 4×hidden, 4 heads
/ 2 KV heads, AdamW lr 3e-3, batches of 128 sentences, linear warmup then cosine decay, ~600
steps; that reached 100% fact accuracy on the trained templates. Accuracy jumps abruptly late in
training, so the build checks it (`check_pretrained`) rather than trusting the step count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mm4ke_ray.modeling import encode_example
from mm4ke_ray.modeling.encoding import PromptFormat


class PretrainError(RuntimeError):
    """Pretraining finished but the model does not know the world well enough to be used."""


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and optimizer settings for pretraining the demo model."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int | None = None  # None: 4 * hidden
    lr: float = 3e-3
    batch_size: int = 128
    steps: int = 600
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    # The build refuses (raises PretrainError) below this fact accuracy on the trained templates.
    min_accuracy: float = 0.9

    def __post_init__(self):
        problems = []
        if self.hidden % self.heads or self.heads % self.kv_heads:
            problems.append(
                f"hidden ({self.hidden}) must be divisible by heads ({self.heads}) "
                f"and heads by kv_heads ({self.kv_heads})"
            )
        if self.steps < 1 or self.batch_size < 1 or self.layers < 1:
            problems.append("steps, batch_size and layers must be >= 1")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if problems:
            raise ValueError("; ".join(problems))


def build_model(config: PretrainConfig, vocab_size: int, tokenizer):
    """A randomly initialised Qwen2 of the configured shape (seeded)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    model_config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate or 4 * config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    return AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)


def _encode_corpus(tokenizer, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """All sentences as one right-padded (N, T) id matrix (<bos> ... <eos>) and their labels
    (-100 on padding, so padding is never a target)."""
    rows = [list(tokenizer(s)["input_ids"]) + [tokenizer.eos_token_id] for s in sentences]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = ids[i, : len(row)]
    return ids, labels


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    model,
    tokenizer,
    sentences: Sequence[str],
    config: PretrainConfig,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Train `model` in place on `sentences` (next-token loss on every real token).

    Batches are drawn from seeded reshuffles of the corpus, so a run repeats exactly on the same
    machine and thread count. Returns {"final_loss", "seconds", "steps"}.
    """
    ids, labels = _encode_corpus(tokenizer, sentences)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = max(1, int(config.warmup_fraction * config.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.steps, warmup)
    )
    order, cursor = torch.randperm(len(ids), generator=generator), 0
    model.train()
    start, loss_value = time.perf_counter(), float("nan")
    for step in range(config.steps):
        if cursor + config.batch_size > len(order):
            order, cursor = torch.randperm(len(ids), generator=generator), 0
        batch = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        mask = (labels[batch] != -100).long()
        loss = model(input_ids=ids[batch], attention_mask=mask, labels=labels[batch]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        if progress and ((step + 1) % 100 == 0 or step + 1 == config.steps):
            progress(f"pretraining step {step + 1}/{config.steps}, loss {loss_value:.3f}")
    model.eval()
    return {
        "final_loss": loss_value,
        "seconds": round(time.perf_counter() - start, 2),
        "steps": config.steps,
    }


@dataclass(frozen=True)
class AnswerScores:
    """Token-level (EasyEdit: mean over answer tokens, then over items) and fact-level (every
    answer token right, i.e. the greedy continuation is the whole answer) accuracy."""

    token: float
    fact: float
    count: int


@torch.no_grad()
def answer_scores(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    prompt_format: PromptFormat = "plain",
    batch_size: int = 256,
) -> AnswerScores:
    """Teacher-forced token and fact accuracy of `answer` after `prompt` for each pair.

    Fact accuracy equals "greedy decoding from the prompt produces the whole answer": greedy
    picks the argmax at each position, and teacher forcing feeds exactly those tokens while they
    match. Encodes with `encode_example`, the same way R-SFT and the edit metrics do.
    """
    if not pairs:
        raise ValueError("answer_scores needs at least one (prompt, answer) pair")
    device = next(model.parameters()).device
    token_total, fact_total = 0.0, 0
    for lo in range(0, len(pairs), batch_size):
        encoded = [
            encode_example(tokenizer, p, a, prompt_format) for p, a in pairs[lo : lo + batch_size]
        ]
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            mask[i, : len(e.input_ids)] = 1
        # Right padding with causal attention leaves every real position's logits unchanged.
        predicted = (
            model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.argmax(-1).cpu()
        )
        for i, e in enumerate(encoded):
            hits = (
                predicted[i, e.answer_start - 1 : len(e.input_ids) - 1]
                == ids[i, e.answer_start : len(e.input_ids)]
            )
            token_total += hits.float().mean().item()
            fact_total += int(hits.all())
    return AnswerScores(
        token=token_total / len(pairs), fact=fact_total / len(pairs), count=len(pairs)
    )


def fact_accuracy(
    model, tokenizer, pairs: Sequence[tuple[str, str]], prompt_format: PromptFormat = "plain"
) -> float:
    """Fraction of (prompt, answer) pairs whose whole answer the model produces greedily."""
    return answer_scores(model, tokenizer, pairs, prompt_format).fact


def world_accuracy(model, tokenizer, world) -> dict:
    """Fact and token accuracy per template: trained (statement, question; every fact),
    rephrase_trained (rephrase template, people who saw it) and rephrase_heldout (the others)."""
    groups = {
        "statement": [(f.prompt("statement"), f.value) for f in world.facts],
        "question": [(f.prompt("question"), f.value) for f in world.facts],
        "rephrase_trained": [
            (f.prompt("rephrase"), f.value)
            for f in world.facts
            if f.subject in world.rephrase_trained
        ],
        "rephrase_heldout": [
            (f.prompt("rephrase"), f.value)
            for f in world.facts
            if f.subject not in world.rephrase_trained
        ],
    }
    out = {}
    for name, pairs in groups.items():
        scores = answer_scores(model, tokenizer, pairs)
        out[name] = {
            "fact": round(scores.fact, 4),
            "token": round(scores.token, 4),
            "count": scores.count,
        }
    trained = groups["statement"] + groups["question"]
    out["trained_fact"] = round((out["statement"]["fact"] + out["question"]["fact"]) / 2, 4)
    out["trained_count"] = len(trained)
    return out


def check_pretrained(accuracy: dict, min_accuracy: float) -> None:
    """Raise PretrainError when the trained-template fact accuracy is below `min_accuracy`."""
    got = accuracy["trained_fact"]
    if got < min_accuracy:
        raise PretrainError(
            f"the demo model reached only {got:.1%} fact accuracy on its trained templates "
            f"(needs {min_accuracy:.0%}); train longer (steps) or check the machine was not "
            f"overloaded. Nothing was cached."
        )
