"""The skip-prefix forward must give the full forward's logits and gradients exactly."""

from __future__ import annotations

import pytest
import torch

from mm4ke_ray.modeling import capture_prefix, decoder_layers, mlp_parameter_names, skip_prefix

ARCHS = ("qwen2", "llama", "gpt2")
LAYERS = 3


@pytest.fixture(scope="module", params=ARCHS)
def model(request, tiny_model_factory):
    return tiny_model_factory(request.param, hidden=32, layers=LAYERS, seed=1)


def _batch(vocab: int, padded: bool):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (3 if padded else 1, 9), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        # Right padding on one row, left padding on another, as batched evaluation produces.
        mask[1, 6:] = 0
        ids[1, 6:] = 0
        mask[2, :3] = 0
        ids[2, :3] = 0
    return ids, mask


def _logits(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@pytest.mark.parametrize("layer", [0, 1, LAYERS - 1])
@pytest.mark.parametrize("padded", [False, True])
def test_skip_prefix_logits_equal_full_forward(model, layer, padded):
    ids, mask = _batch(model.config.vocab_size, padded)
    with torch.no_grad():
        full = _logits(model, ids, mask)
        hidden = capture_prefix(model, layer, ids, mask)
        with skip_prefix(model, layer, hidden):
            skipped = _logits(model, ids, mask)
    assert hidden.shape == (*ids.shape, model.config.hidden_size)
    assert torch.allclose(skipped, full, atol=1e-6, rtol=0)


def test_capture_prefix_is_block_input_and_has_no_graph(model):
    ids, mask = _batch(model.config.vocab_size, True)
    blocks = decoder_layers(model)
    seen = []
    handle = blocks[1].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            _logits(model, ids, mask)
    finally:
        handle.remove()
    model.requires_grad_(True)  # even with every weight trainable, the capture keeps no graph
    try:
        hidden = capture_prefix(model, 1, ids, mask)
    finally:
        model.requires_grad_(False)
    assert torch.equal(hidden, seen[0])
    assert hidden.grad_fn is None and not hidden.requires_grad


def test_blocks_restored_after_skip_even_on_error(model):
    blocks = decoder_layers(model)
    before = list(blocks)
    ids, mask = _batch(model.config.vocab_size, False)
    hidden = capture_prefix(model, 2, ids, mask)
    with pytest.raises(KeyError), skip_prefix(model, 2, hidden):
        assert blocks[0] is not before[0]
        raise KeyError("boom")
    assert all(a is b for a, b in zip(decoder_layers(model), before, strict=True))
    assert not any(h for b in before for h in (b._forward_pre_hooks, b._forward_hooks))


def test_cache_for_another_batch_is_refused(model):
    ids, mask = _batch(model.config.vocab_size, True)
    hidden = capture_prefix(model, 1, ids[:1], mask[:1])
    with (
        pytest.raises(ValueError, match="capture the prefix for the same input_ids"),
        torch.no_grad(),
    ):
        with skip_prefix(model, 1, hidden):
            _logits(model, ids, mask)


def test_layer_out_of_range_is_refused(model):
    ids, mask = _batch(model.config.vocab_size, False)
    with pytest.raises(ValueError, match="out of range: the model has 3 layers"):
        capture_prefix(model, LAYERS, ids, mask)


@pytest.mark.parametrize("layer", [1, LAYERS - 1])
def test_gradients_on_trained_mlp_equal_naive(model, layer):
    ids, mask = _batch(model.config.vocab_size, True)
    names = mlp_parameter_names(model, layer)
    params = dict(model.named_parameters())

    def grads(cached: bool) -> dict[str, torch.Tensor]:
        for n in names:
            params[n].requires_grad_(True)
            params[n].grad = None
        try:
            if cached:
                hidden = capture_prefix(model, layer, ids, mask)
                with skip_prefix(model, layer, hidden):
                    logits = _logits(model, ids, mask)
            else:
                logits = _logits(model, ids, mask)
            (logits.float().logsumexp(-1) * mask).sum().backward()
            return {n: params[n].grad.clone() for n in names}
        finally:
            for n in names:
                params[n].requires_grad_(False)
                params[n].grad = None

    naive, cached = grads(False), grads(True)
    assert names and naive.keys() == cached.keys()
    for n in names:
        assert torch.allclose(cached[n], naive[n], atol=1e-6, rtol=1e-5), n
        assert naive[n].abs().sum() > 0
