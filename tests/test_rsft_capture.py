"""The captured R-SFT step (torch.compile, static shapes per length bucket; CUDA graphs on a GPU)
on a CPU: the same losses and deltas as the eager suffix step, a few graphs for many lengths."""

from __future__ import annotations

import pytest
import torch

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.rsft import RSFTConfig, run_rsft


def test_captured_step_matches_eager(tiny_model_factory, tiny_tokenizer, zsre_raw):
    from torch._dynamo.utils import counters

    records = [EditRecord(prompt=r["prompt"], target_new=r["target_new"]) for r in zsre_raw[:6]]
    lengths = {len(tiny_tokenizer(r.prompt + " " + r.target_new)["input_ids"]) for r in records}
    assert len(lengths) >= 3  # several sequence lengths share a bucket
    model = tiny_model_factory("qwen2", hidden=32, layers=3, seed=6)
    config = RSFTConfig(layer=1, epochs=2, steps=2, lr=1e-3, threshold=0.0)
    eager = run_rsft(model, tiny_tokenizer, records, config)
    torch._dynamo.reset()
    counters.clear()
    # aot_eager: Dynamo capture + AOTAutograd's joint forward/backward graph, no C++ codegen
    # (a CPU test in seconds); on CUDA the default is inductor with CUDA graphs.
    captured = run_rsft(model, tiny_tokenizer, records, config, capture=True, length_bucket=32,
                        compile_backend="aot_eager")
    assert eager.stepper == captured.stepper == "suffix"
    assert captured.captured and not eager.captured and captured.as_json()["captured"]
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 3, graphs  # one per (length bucket, answer bucket), not per record
    again = run_rsft(model, tiny_tokenizer, records, config, capture=True, length_bucket=32,
                     compile_backend="aot_eager")
    assert counters["stats"]["unique_graphs"] == graphs  # the next run reuses the graphs
    assert all(torch.equal(again.delta[n], captured.delta[n]) for n in again.delta)
    for a, b in zip(eager.samples, captured.samples, strict=True):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5)
    # Padding changes the matmul shapes, so gradients differ in their last bits, and AdamW's
    # normalisation lets that show on entries whose gradient is ~0: within 1% of one η step.
    for n in eager.delta:
        assert torch.allclose(eager.delta[n], captured.delta[n], atol=1e-2 * config.lr, rtol=1e-4), n


def test_capture_is_ignored_where_the_suffix_step_does_not_apply(tiny_model_factory, tiny_tokenizer,
                                                                  zsre_raw):
    records = [EditRecord(prompt=r["prompt"], target_new=r["target_new"]) for r in zsre_raw[:2]]
    gpt2 = tiny_model_factory("gpt2", hidden=32, layers=3, seed=6)
    config = RSFTConfig(layer=1, epochs=1, steps=2, lr=1e-3, threshold=0.0)
    result = run_rsft(gpt2, tiny_tokenizer, records, config, capture=True)
    assert result.stepper == "model" and result.captured is False
    assert result.updates == 4
