"""GPU check: R-SFT steps/s, merge ms per candidate, evaluation tokens/s, peak GPU memory.

On a Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14/2 heads, MLP 4864, vocab 151,936, tied
embeddings) with random weights in bf16, built directly on the GPU. Edit records are synthetic
(random words; no data files on a GPU box), encoded with a word-level tokenizer built from them.
Each section also runs the naive counterpart for a ratio on the same device:
- R-SFT: `run_rsft` by default (suffix step, float32 master weights for the bf16 MLP), with
  `final_loss=True`, with `capture=True` (torch.compile "reduce-overhead": CUDA graphs, static
  shapes per length bucket; warmed up on all records first, compile time reported apart) vs
  `use_prefix_cache=False`, layer 12 of 24, E=2, K=6, τ=0; the captured delta's cosine to the
  eager one (bf16 tolerance).
- merge: `apply_delta_` + `restore_` of a one-layer delta (sparsity 0.2 and 0) vs the file path
  (merged copy, `save_pretrained`, `from_pretrained` back onto the GPU).
- evaluation: `EditEvaluator` batched, with the prefix cache at layer 12, and one at a time.
Peak GPU memory is `torch.cuda.max_memory_allocated` per section. Sections fail independently.

GPU_CHECK_SHAPE=smollm2 runs the same sections on SmolLM2-135M-Instruct itself (float32, its tokenizer,
the first real ZsRE records in chat format, layer 6): `gpu_check_smollm2.json`.

Run through `benchmarks/gpu_check.sh`. GPU_CHECK_SHAPE=tiny runs a tiny model (CPU test);
GPU_CHECK_SMALL=1 shrinks any shape's record counts the same way; GPU_CHECK_SECTIONS=rsft,eval runs
only those sections.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),
    # SmolLM2-135M-Instruct itself (real weights, tokenizer and ZsRE records in chat format): the
    # project's real model, loaded through the product from the GGUF in the mm4ke-ray cache.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=3000),
}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


_OVERALL = [0]  # the largest per-section peak: resetting per section loses the global one


def peak() -> int | None:
    if not torch.cuda.is_available():
        return None
    value = torch.cuda.max_memory_allocated()
    _OVERALL[0] = max(_OVERALL[0], value)
    return value


def real_model():
    """SmolLM2-135M-Instruct as a sweep loads it (float32), on the GPU; its tokenizer."""
    model, tok, _ = common.smollm2()
    return model.to(device()).eval(), tok


def build_model(shape: str):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    with device():  # initialise on the GPU: a CPU init of 0.5B weights takes many seconds
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def synthetic_records(n: int, seed: int = 0):
    """Edit records of random words: prompts of 8-16 words, answers of 1-3, one rephrase,
    one portability and one locality item each."""
    from mm4ke_ray.data.records import QA, EditRecord

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(1500)]

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [
        EditRecord(prompt=text(8, 16), target_new=text(1, 3), ground_truth=text(1, 3), subject=text(1, 2),
                   rephrase_prompts=(text(8, 16),), portability=(QA(text(8, 16), text(1, 3), "Reasoning"),),
                   locality=(QA(text(8, 16), text(1, 3), "Relation_Specificity"),), source=f"synthetic:{i}")
        for i in range(n)
    ]


# GPU_CHECK_COMPILE_BACKEND=aot_eager checks the captured path on a CPU without C++ codegen.
BACKEND = os.environ.get("GPU_CHECK_COMPILE_BACKEND") or None


def section_rsft(model, tok, records, layer, prompt_format="plain") -> dict:
    from mm4ke_ray.rsft import RSFTConfig, run_rsft

    config = RSFTConfig(layer=layer, epochs=2, steps=6, lr=1e-5, threshold=0.0, prompt_format=prompt_format)
    run_rsft(model, tok, records[:2], config)  # warm-up: kernels, allocator
    out = {"records": len(records), "epochs": 2, "steps": 6, "layer": layer, "prompt_format": prompt_format}
    deltas = {}

    def timed(name, **kwargs):
        reset_peak()
        sync()
        start = time.perf_counter()
        result = run_rsft(model, tok, records, config, **kwargs)
        sync()
        seconds = time.perf_counter() - start
        deltas[name] = result.delta
        out[name] = {"updates": result.updates, "seconds": seconds, "steps_per_s": result.updates / seconds,
                     "peak_gpu_bytes": peak(), "stepper": result.stepper, "captured": result.captured,
                     "master_dtype": result.master_dtype}

    for name, kwargs in (("ours", {}), ("ours_final_loss", {"final_loss": True}),
                         ("naive_full_forward", {"use_prefix_cache": False})):
        timed(name, **kwargs)
    out["ratio_vs_naive"] = out["ours"]["steps_per_s"] / out["naive_full_forward"]["steps_per_s"]
    try:  # the captured path: compile (all length buckets) once, then time a second run
        sync()
        start = time.perf_counter()
        run_rsft(model, tok, records, config, capture=True, compile_backend=BACKEND)
        sync()
        out["captured_warmup_seconds"] = time.perf_counter() - start
        timed("ours_captured", capture=True, compile_backend=BACKEND)
        out["captured_vs_ours"] = out["ours_captured"]["steps_per_s"] / out["ours"]["steps_per_s"]
        out["captured_vs_naive"] = out["ours_captured"]["steps_per_s"] / out["naive_full_forward"]["steps_per_s"]
        a = torch.cat([d.flatten() for _, d in sorted(deltas["ours"].items())])
        b = torch.cat([d.flatten() for _, d in sorted(deltas["ours_captured"].items())])
        out["captured_delta_cosine"] = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        out["captured_delta_max_abs_diff"] = (a - b).abs().max().item()
    except Exception as exc:  # noqa: BLE001 - report it, keep the eager figures
        out["ours_captured"] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    return out


def section_merge(model, layer) -> dict:
    from transformers import AutoModelForCausalLM

    from mm4ke_ray.merge import add_update_, apply_delta_, prepare_delta, restore_

    delta = {k: v.to(device()) for k, v in common.one_layer_delta(model, layer).items()}
    out = {"delta_entries": sum(t.numel() for t in delta.values())}
    for sparsity in (0.2, 0.0):
        for _ in range(3):  # warm-up
            restore_(model, apply_delta_(model, delta, alpha=0.5, sparsity=sparsity))
        reset_peak()
        sync()
        n = 20
        start = time.perf_counter()
        for _ in range(n):
            restore_(model, apply_delta_(model, delta, alpha=0.5, sparsity=sparsity))
        sync()
        out[f"ours_ms_sparsity_{sparsity}"] = 1e3 * (time.perf_counter() - start) / n
        out[f"peak_gpu_bytes_sparsity_{sparsity}"] = peak()
    work = tempfile.mkdtemp(prefix="gpu-check-merge-")
    try:
        times = []
        for _ in range(2):
            sync()
            start = time.perf_counter()
            merged = copy.deepcopy(model)
            add_update_(merged, prepare_delta(delta, 0.5, 0.2))
            merged.save_pretrained(work, safe_serialization=True)
            del merged
            loaded = AutoModelForCausalLM.from_pretrained(work, dtype=next(model.parameters()).dtype,
                                                          device_map=str(device()))
            sync()
            times.append(time.perf_counter() - start)
            del loaded
        out["naive_file_path_ms"] = 1e3 * min(times)
        out["speedup_sparsity_0.2"] = out["naive_file_path_ms"] / out["ours_ms_sparsity_0.2"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def section_eval(model, tok, records, layer, one_at_a_time: int, prompt_format="plain") -> dict:
    from mm4ke_ray.evaluate.accuracy import token_accuracy
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
    from mm4ke_ray.merge import apply_delta_, restore_

    full = EditEvaluator(tok, records, prompt_format, batch_size=64)
    cached = EditEvaluator(tok, records, prompt_format, batch_size=64, prefix_cache=True)
    reference = full.base_predictions(model)
    tokens = sum(int(b.attention_mask.sum()) for b in full.accuracy_batches + full.locality_batches)
    delta = {k: v.to(device()) for k, v in common.one_layer_delta(model, layer).items()}
    snapshot = apply_delta_(model, delta, alpha=0.0, sparsity=0.0)
    out = {"records": len(records), "tokens_per_evaluation": tokens, "batch_size": 64}
    try:
        want = full.evaluate(model, reference).as_dict()
        got = cached.evaluate(model, reference, first_layer=layer).as_dict()  # fills the cache
        out["cached_metrics_equal"] = want == got
        for name, fn in (("batched", lambda: full.evaluate(model, reference)),
                         ("batched_prefix_cache", lambda: cached.evaluate(model, reference, first_layer=layer))):
            reset_peak()
            sync()
            start = time.perf_counter()
            for _ in range(3):
                fn()
            sync()
            seconds = (time.perf_counter() - start) / 3
            out[name] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gpu_bytes": peak()}
        subset = records[:one_at_a_time]
        sub_eval = EditEvaluator(tok, subset, prompt_format, batch_size=64)
        sub_tokens = sum(int(b.attention_mask.sum()) for b in sub_eval.accuracy_batches)
        sync()
        start = time.perf_counter()
        for r in subset:
            token_accuracy(model, tok, r.prompt, r.target_new)
            for p in r.rephrase_prompts:
                token_accuracy(model, tok, p, r.target_new)
            for qa in r.portability:
                token_accuracy(model, tok, qa.prompt, qa.answer)
        sync()
        seconds = time.perf_counter() - start
        out["one_at_a_time_accuracy_probes"] = {"records": len(subset), "seconds": seconds,
                                                "tokens_per_s": sub_tokens / seconds}
        out["batched_vs_one_at_a_time"] = out["batched"]["tokens_per_s"] / out["one_at_a_time_accuracy_probes"]["tokens_per_s"]
        out["prefix_cache_speedup"] = out["batched"]["seconds"] / out["batched_prefix_cache"]["seconds"]
        n = model.config.num_hidden_layers
        out["prefix_cache_ideal"] = n / (n - layer)
    finally:
        restore_(model, snapshot)
    return out


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT") or common.RESULTS)
    shape = os.environ.get("GPU_CHECK_SHAPE", "qwen2.5-0.5b")
    small = shape == "tiny" or bool(os.environ.get("GPU_CHECK_SMALL"))
    wanted = set(filter(None, os.environ.get("GPU_CHECK_SECTIONS", "rsft,merge,eval").split(",")))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    started = time.perf_counter()
    doc = {"benchmark": "gpu_check", "shape": shape, "config": SHAPES[shape], "machine": common.machine()}
    if shape == "smollm2":  # the real model: its own tokenizer, real ZsRE records in chat, layer 6
        model, tok = real_model()
        layer, prompt_format, records = 6, "chat", common.zsre_records(64 if small else 256)
        doc["weights"] = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)"
    else:
        model = build_model(shape)
        layer, prompt_format = SHAPES[shape]["num_hidden_layers"] // 2, "plain"
        records = synthetic_records(64 if small else 512)
        tok = build_word_tokenizer(common.record_texts(records))
    doc["params"] = sum(p.numel() for p in model.parameters())
    doc["dtype"] = str(next(model.parameters()).dtype)
    sections = {
        "rsft": lambda: section_rsft(model, tok, records[: 4 if small else 16], layer, prompt_format),
        "merge": lambda: section_merge(model, layer),
        "eval": lambda: section_eval(model, tok, records, layer, 8 if small else 64, prompt_format),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"tiny": "gpu_check_tiny.json", "smollm2": "gpu_check_smollm2.json"}
    path = out_dir / names.get(shape, "gpu_check.json")
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", "420"))  # stay inside the 8-minute limit
    for name, fn in sections.items():
        if name not in wanted:
            continue
        if time.perf_counter() - started > budget:
            doc[name] = {"skipped": f"over the {budget:.0f} s budget"}
            continue
        t0 = time.perf_counter()
        try:
            doc[name] = fn()
        except Exception as exc:  # noqa: BLE001 - report the failure, keep the other sections
            doc[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
        doc[name]["section_seconds"] = time.perf_counter() - t0
        print(f"[{time.perf_counter() - started:6.1f} s] {name}: {json.dumps(doc[name], default=str)[:600]}", flush=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")  # partial results survive a kill
    if torch.cuda.is_available():
        peak()
        doc["peak_gpu_bytes_overall"] = _OVERALL[0]
    doc["total_seconds"] = time.perf_counter() - started
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
