"""Evaluation with cached hidden states below the delta's layer gives the uncached metrics exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import ZSRE

from mm4ke_ray.data import load_edit_records
from mm4ke_ray.evaluate.accuracy import PrefixCache
from mm4ke_ray.evaluate.candidate import CandidateEvaluator, EvalSettings, delta_first_layer
from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
from mm4ke_ray.merge import apply_delta_, restore_
from mm4ke_ray.modeling import decoder_layers, mlp_parameter_names

LAYERS = 4


@pytest.fixture(scope="module")
def records():
    return load_edit_records(str(ZSRE), limit=12).records


def _delta(model, layer: int, seed: int, scale: float = 0.05) -> dict:
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(params[n].shape, generator=gen) * scale for n in mlp_parameter_names(model, layer)}


def _evaluate_candidates(evaluator, model, reference, candidates, use_layer: bool):
    results = []
    for layer, seed, alpha, sparsity in candidates:
        snapshot = apply_delta_(model, _delta(model, layer, seed), alpha=alpha, sparsity=sparsity)
        try:
            first = layer if use_layer else None
            metrics = evaluator.evaluate(model, reference, first_layer=first)
            # The raw argmax ids too (through the same single forward point, same cache state).
            evaluator._first_layer = first
            preds = evaluator._predictions(model, evaluator._accuracy)
        finally:
            evaluator._first_layer = None
            restore_(model, snapshot)
        results.append((metrics, preds))
    return results


# Candidates of several layers, interleaved, repeated deltas with other (α, sparsity): the cache
# must serve each layer's entries and never mix them up.
CANDIDATES = [(2, 1, 0.0, 0.0), (1, 2, 0.3, 0.2), (2, 3, 0.5, 0.5), (3, 4, 0.0, 0.0), (1, 2, 0.1, 0.0), (0, 5, 0.2, 0.1)]


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_cached_metrics_equal_uncached(arch, tiny_model_factory, tiny_tokenizer, records):
    model = tiny_model_factory(arch, hidden=32, layers=LAYERS, seed=3)
    plain = EditEvaluator(tiny_tokenizer, records, batch_size=5)
    cached = EditEvaluator(tiny_tokenizer, records, batch_size=5, prefix_cache=True)
    reference = plain.base_predictions(model)
    want = _evaluate_candidates(plain, model, reference, CANDIDATES, use_layer=False)
    got = _evaluate_candidates(cached, model, reference, CANDIDATES, use_layer=True)
    for (m_want, p_want), (m_got, p_got) in zip(want, got, strict=True):
        assert torch.equal(p_got, p_want)
        assert m_got.as_dict() == m_want.as_dict()
        assert m_got.per_record == m_want.per_record
    # The candidates really differ from the base and from each other (else the check is empty).
    assert len({m.locality for m, _ in want}) > 2 and all(m.locality < 100 for m, _ in want)
    layers_used = {c[0] for c in CANDIDATES if c[0] > 0}
    assert len(cached.prefix_cache) == len(layers_used) * len(cached.accuracy_batches + cached.locality_batches)


def test_cache_skips_the_low_blocks(tiny_model_factory, tiny_tokenizer, records):
    model = tiny_model_factory("qwen2", hidden=32, layers=LAYERS, seed=3)
    evaluator = EditEvaluator(tiny_tokenizer, records, batch_size=5, prefix_cache=True)
    reference = evaluator.base_predictions(model)
    calls = [0] * LAYERS
    handles = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(decoder_layers(model))]
    try:
        _evaluate_candidates(evaluator, model, reference, [(2, 1, 0.0, 0.0)], use_layer=True)
        first = list(calls)
        _evaluate_candidates(evaluator, model, reference, [(2, 7, 0.4, 0.3)], use_layer=True)
    finally:
        for h in handles:
            h.remove()
    second = [c - f for c, f in zip(calls, first, strict=True)]
    assert first[0] > 0 and second[0] == second[1] == 0  # blocks 0, 1 ran only for the first
    assert second[2] == second[3] == first[2] > 0
    cache = evaluator.prefix_cache
    assert cache.hits > 0 and cache.misses == len(cache) and cache.nbytes > 0


def test_cache_is_bounded_and_per_model(tiny_model_factory, tiny_tokenizer, records):
    model = tiny_model_factory("qwen2", hidden=32, layers=LAYERS, seed=3)
    evaluator = EditEvaluator(tiny_tokenizer, records, batch_size=5)
    batches = evaluator.accuracy_batches
    one = PrefixCache().hidden(model, 2, batches[0])
    small = PrefixCache(max_bytes=one.numel() * one.element_size() * 2)
    for b in batches[:4]:
        small.hidden(model, 2, b)
    assert len(small) <= 2 and small.nbytes <= small.max_bytes
    other = tiny_model_factory("qwen2", hidden=32, layers=LAYERS, seed=4)
    before = small.hidden(model, 2, batches[3])
    after = small.hidden(other, 2, batches[3])  # another model: its own states, not the cached ones
    assert not torch.equal(before, after) and len(small) == 1
    with pytest.raises(ValueError, match="first_layer"):
        evaluator.evaluate(model, None, first_layer=-1)


def test_delta_first_layer(tiny_model_factory):
    model = tiny_model_factory("qwen2", hidden=32, layers=LAYERS)
    assert delta_first_layer(model, mlp_parameter_names(model, 2)) == 2
    assert delta_first_layer(model, mlp_parameter_names(model, [3, 1])) == 1
    assert delta_first_layer(model, ["model.layers.2.self_attn.q_proj.weight"]) is None
    assert delta_first_layer(model, [*mlp_parameter_names(model, 2), "model.embed_tokens.weight"]) is None
    assert delta_first_layer(model, []) is None


def test_candidate_evaluator_uses_the_cache_with_identical_metrics(tiny_model_dir):
    settings = dict(model=str(tiny_model_dir), edits=str(ZSRE), limit=6, batch_size=4)
    cached = CandidateEvaluator(EvalSettings(**settings))
    plain = CandidateEvaluator(EvalSettings(**settings, prefix_cache=False), reference=cached.reference)
    assert plain.edit_eval.prefix_cache is None
    for layer, seed, alpha, sparsity in [(2, 1, 0.2, 0.0), (2, 2, 0.0, 0.5), (3, 3, 0.5, 0.2)]:
        delta = _delta(cached.model, layer, seed)
        a = cached.evaluate(delta, alpha, sparsity)
        b = plain.evaluate(delta, alpha, sparsity)
        for key in a:
            if not key.endswith("seconds"):
                assert a[key] == b[key], key
    assert cached.edit_eval.prefix_cache.hits > 0
