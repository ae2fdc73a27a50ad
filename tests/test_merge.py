"""Merge step: sparsifiers, prepare_delta, in-place apply/restore, build/save, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from mm4ke_ray.cli import main
from mm4ke_ray.delta import save_delta
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge import (
    MERGE_INFO_FILE,
    SPARSIFIERS,
    Registry,
    apply_delta_,
    apply_update_,
    build_merged,
    dare,
    delta_from_models,
    get_sparsifier,
    kept_count,
    magnitude,
    merged_in_place,
    prepare_delta,
    restore_,
)
from mm4ke_ray.modeling import mlp_parameter_names


def _randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)
    assert int(x.count_nonzero()) == x.numel()  # so count_nonzero counts kept entries
    return x


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _perturb(model, names, scale=0.05, seed=1) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: _randn(*params[n].shape, seed=seed + i) * scale for i, n in enumerate(names)}


# ---------------------------------------------------------------- sparsifiers


@pytest.mark.parametrize("density", [0.8, 0.5, 0.29, 0.1, 0.01, 1 / 3072, 0.9999])
def test_magnitude_keeps_exactly_k_largest(density):
    x = _randn(64, 48)
    k = kept_count(x.numel(), density)
    assert k == int(round(density * x.numel(), 6))
    out = magnitude(x, density)
    kept = out != 0
    assert int(out.count_nonzero()) == k
    assert torch.equal(out[kept], x[kept])  # survivors are unchanged
    assert x.abs()[kept].min() > x.abs()[~kept].max()  # and they are the largest |x|
    assert torch.allclose(out.norm() ** 2 + x[~kept].norm() ** 2, x.norm() ** 2)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert int(_randn(64, 48).count_nonzero()) == x.numel()  # input left alone


def test_magnitude_counts_survive_float_rounding():
    # Plain int(): int(0.29 * 100) == 28 and int((1 - 0.9) * 10) == 0.
    assert kept_count(100, 0.29) == 29
    assert kept_count(10, 1 - 0.9) == 1
    assert int(magnitude(_randn(10, 10), 0.29).count_nonzero()) == 29
    assert int(magnitude(_randn(10), 1 - 0.9).count_nonzero()) == 1


def test_magnitude_edge_cases_and_ties():
    x = _randn(5, 7)
    assert magnitude(x, 1.0) is x  # density 1 keeps everything
    assert torch.equal(magnitude(x, 0.01), torch.zeros_like(x))  # k = int(0.35) = 0
    assert torch.equal(magnitude(x, 0.0), torch.zeros_like(x))
    # Ties at the threshold go to the lowest flat index, every time.
    t = torch.tensor([1.0, -1.0, 1.0, 2.0, -1.0])
    assert torch.equal(magnitude(t, 0.6), torch.tensor([1.0, -1.0, 0.0, 2.0, 0.0]))
    assert torch.equal(
        magnitude(torch.ones(4, 4), 0.5).reshape(-1), torch.tensor([1.0] * 8 + [0.0] * 8)
    )
    # Zeroed entries are +0.0, not -0.0.
    assert not torch.signbit(magnitude(-torch.ones(3), 0.4)[1:]).any()


def test_magnitude_bfloat16():
    x = _randn(32, 16, dtype=torch.bfloat16)
    out = magnitude(x, 0.25)
    assert out.dtype == torch.bfloat16 and int(out.count_nonzero()) == 128
    assert torch.equal(out != 0, magnitude(x.float(), 0.25) != 0)


def test_dare_keeps_expected_fraction_and_rescales():
    x = _randn(200, 200)
    out = dare(x, 0.3, torch.Generator().manual_seed(7))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # binomial sd 0.0023
    assert torch.equal(out[kept], x[kept] * (1 / 0.3))
    assert torch.equal(out, dare(x, 0.3, torch.Generator().manual_seed(7)))  # seeded: repeats
    assert not torch.equal(out, dare(x, 0.3, torch.Generator().manual_seed(8)))
    assert dare(x, 1.0) is x
    assert torch.equal(dare(x, 0.0), torch.zeros_like(x))


def test_registry_lookup_and_did_you_mean():
    assert {"magnitude", "dare"} <= set(SPARSIFIERS.names())
    assert get_sparsifier("magnitude") is magnitude
    with pytest.raises(UserError, match=r"did you mean 'magnitude'\?.*known: dare, magnitude"):
        get_sparsifier("magnitde")
    reg = Registry("widget")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)


# ---------------------------------------------------------------- prepare_delta


@pytest.mark.parametrize(
    "alpha, sparsity, field",
    [(1.0, 0.2, "alpha"), (-0.1, 0.2, "alpha"), (float("nan"), 0.2, "alpha"), (True, 0.2, "alpha"),
     (0.5, 1.0, "sparsity"), (0.5, -0.01, "sparsity"), (0.5, "0.2", "sparsity")],
)  # fmt: skip
def test_prepare_delta_validates(alpha, sparsity, field):
    with pytest.raises(UserError, match=rf"{field} must be"):
        prepare_delta({"w": _randn(4, 4)}, alpha, sparsity)


def test_prepare_delta_scales_and_sparsifies():
    delta = {"b": _randn(16, 8, seed=1), "a": _randn(8, seed=2)}
    before = {n: t.clone() for n, t in delta.items()}
    update = prepare_delta(delta, alpha=0.25, sparsity=0.5)
    for name, t in delta.items():
        assert torch.equal(update[name], magnitude(t, 0.5) * 0.75)
        assert int(update[name].count_nonzero()) == t.numel() // 2
        assert torch.equal(t, before[name])  # input untouched
    ident = prepare_delta(delta, 0.0, 0.0)
    assert all(torch.equal(ident[n], delta[n]) and ident[n] is not delta[n] for n in delta)
    # dare: one seed, same result whatever the dict order.
    d1 = prepare_delta(delta, 0.0, 0.5, "dare", seed=3)
    d2 = prepare_delta(dict(reversed(list(delta.items()))), 0.0, 0.5, "dare", seed=3)
    assert all(torch.equal(d1[n], d2[n]) for n in delta)
    with pytest.raises(UserError, match="'w' contains NaN"):
        prepare_delta({"w": torch.tensor([1.0, float("nan")])}, 0.0, 0.0)
    with pytest.raises(UserError, match="unknown sparsification method 'top'"):
        prepare_delta(delta, 0.0, 0.0, method="top")


# ---------------------------------------------------------------- in place on a model


def test_apply_then_restore_is_bit_exact(tiny_model_factory):
    model = tiny_model_factory("qwen2", hidden=32, layers=2)
    names = mlp_parameter_names(model, 1)
    delta = _perturb(model, names)
    base = _params(model)
    snap = apply_delta_(model, delta, alpha=0.3, sparsity=0.5)
    assert sorted(snap.names) == sorted(names)
    assert snap.nbytes == sum(base[n].numel() * 4 for n in names)
    update = prepare_delta(delta, 0.3, 0.5)
    for name, p in model.named_parameters():
        if name in delta:
            assert torch.equal(p, base[name] + update[name])  # float32 model: exact
            assert int((p != base[name]).sum()) == base[name].numel() // 2
        else:
            assert torch.equal(p, base[name])  # outside the delta: untouched
    restore_(model, snap)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_alpha_zero_sparsity_zero_reproduces_finetuned(tiny_model_factory):
    base_model = tiny_model_factory("llama", hidden=32, layers=2)
    sft_model = tiny_model_factory("llama", hidden=32, layers=2)
    names = mlp_parameter_names(sft_model, 0)
    with torch.no_grad():
        for name, d in _perturb(sft_model, names).items():
            sft_model.get_parameter(name).add_(d)
    delta = delta_from_models(base_model, sft_model)
    assert sorted(delta) == sorted(names)  # only the tensors that differ
    base = _params(base_model)
    with merged_in_place(base_model, delta, alpha=0.0, sparsity=0.0):
        for name, p in base_model.named_parameters():
            s = sft_model.get_parameter(name)
            # base + (sft − base) is exact as computed, and equals sft up to float32 rounding.
            assert torch.equal(p, base[name] + delta.get(name, torch.zeros_like(p)))
            assert (p - s).abs().max() <= 1e-6
    assert all(torch.equal(p, base[n]) for n, p in base_model.named_parameters())
    assert sorted(delta_from_models(base_model, sft_model, names[:1])) == names[:1]
    with pytest.raises(UserError, match="does not have"):
        delta_from_models(base_model, sft_model, ["model.nope.weight"])


def test_alpha_near_one_is_base_and_one_is_refused(tiny_model_factory):
    model = tiny_model_factory("qwen2", hidden=32, layers=2)
    delta = _perturb(model, mlp_parameter_names(model, 0), scale=1.0)
    base = _params(model)
    with merged_in_place(model, delta, alpha=0.999999, sparsity=0.0):
        for name, p in model.named_parameters():
            assert (p - base[name]).abs().max() <= 1e-6 * delta.get(name, p).abs().max() + 1e-6
    with pytest.raises(UserError, match="alpha must be in"):
        apply_delta_(model, delta, alpha=1.0, sparsity=0.0)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_bfloat16_model_restores_bit_exactly(tiny_model_factory):
    model = tiny_model_factory("gpt2", hidden=32, layers=2).to(torch.bfloat16)
    names = mlp_parameter_names(model, 1)
    delta = _perturb(model, names)
    base = _params(model)
    snap = apply_delta_(model, delta, alpha=0.5, sparsity=0.2, method="dare", seed=1)
    update = prepare_delta(delta, 0.5, 0.2, "dare", seed=1)
    for name in names:
        p = model.get_parameter(name)
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, (base[name].float() + update[name]).bfloat16())  # one rounding
    restore_(model, snap)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_bad_delta_names_fail_before_any_change(tiny_model_factory):
    model = tiny_model_factory("qwen2", hidden=32, layers=2)
    base = _params(model)
    names = mlp_parameter_names(model, 0)
    delta = _perturb(model, names)
    with pytest.raises(
        UserError,
        match=r"'model.layers.0.mlp.up_prj.weight'.*did you mean 'model.layers.0.mlp.up_proj.weight'",
    ):
        apply_delta_(model, {**delta, "model.layers.0.mlp.up_prj.weight": torch.ones(1)}, 0.0, 0.0)
    with pytest.raises(UserError, match="has shape"):
        apply_update_(model, {names[0]: torch.ones(3, 3)})
    with pytest.raises(RuntimeError, match="boom"):
        with merged_in_place(model, delta, 0.1, 0.1):
            raise RuntimeError("boom")
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


# ---------------------------------------------------------------- build, save, CLI


@pytest.fixture(scope="module")
def saved_delta(tmp_path_factory, tiny_model_dir):
    """A delta perturbing layer 1's MLP of the saved tiny model, written with save_delta."""
    from mm4ke_ray.modeling import load_model

    model = load_model(str(tiny_model_dir))
    names = mlp_parameter_names(model, 1)
    path = tmp_path_factory.mktemp("delta")
    save_delta(path, _perturb(model, names), {"layer": 1})
    return path, names, _params(model)


def test_cli_merge_end_to_end(tmp_path, tiny_model_dir, saved_delta, capsys):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    delta_dir, names, base = saved_delta
    out = tmp_path / "merged"
    argv = ["merge", "--base", str(tiny_model_dir), "--delta", str(delta_dir), "--alpha", "0.25", "--sparsity", "0.5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "alpha=0.25" in printed and "sparsity=0.5 (density 0.5)" in printed and str(out) in printed
    )

    merged = AutoModelForCausalLM.from_pretrained(out)
    from mm4ke_ray.delta import load_delta

    update = prepare_delta(load_delta(delta_dir)[0], 0.25, 0.5)
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, base[n])]
    assert sorted(changed) == sorted(names)  # only layer 1's MLP differs from the base
    for name in names:
        assert torch.equal(merged.get_parameter(name), base[name] + update[name])
    info = json.loads((out / MERGE_INFO_FILE).read_text())
    assert info["kept_entries"] == sum(base[n].numel() // 2 for n in names)
    assert info["delta_metadata"] == {"layer": 1} and info["density"] == 0.5
    # The tokenizer is the base's, byte for byte.
    assert (out / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    text = "The capital of France is"
    assert (
        PreTrainedTokenizerFast.from_pretrained(out)(text).input_ids
        == PreTrainedTokenizerFast.from_pretrained(tiny_model_dir)(text).input_ids
    )

    # Non-empty --out: refused (exit 2), then accepted with --force.
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert (
        main([*argv[:-4], "--alpha", "0.5", "--sparsity", "0.0", "--out", str(out), "--force"]) == 0
    )


def test_cli_merge_from_finetuned_model(tmp_path, tiny_model_dir, saved_delta):
    from mm4ke_ray.demo.tiny import save_pretrained_pair
    from mm4ke_ray.modeling import load_model, load_tokenizer

    delta_dir, names, base = saved_delta
    sft = load_model(str(tiny_model_dir))
    with torch.no_grad():
        for name, d in _perturb(sft, names[:1], seed=9).items():
            sft.get_parameter(name).add_(d)
    sft_dir = save_pretrained_pair(sft, load_tokenizer(str(tiny_model_dir)), tmp_path / "sft")
    result = build_merged(str(tiny_model_dir), sft=str(sft_dir), alpha=0.0, sparsity=0.0)
    assert result.info["tensors"] == names[:1]
    for name, p in result.model.named_parameters():
        assert (p - sft.get_parameter(name)).abs().max() <= 1e-6
    with pytest.raises(UserError, match="exactly one of"):
        build_merged(str(tiny_model_dir), alpha=0.0, sparsity=0.0)


@pytest.mark.parametrize(
    "args, message",
    [(["--alpha", "1.0", "--sparsity", "0.2"], "alpha must be in [0, 1)"),
     (["--alpha", "0.2", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
     (["--alpha", "0.2", "--sparsity", "0.2", "--method", "dar"], "did you mean 'dare'?")],
)  # fmt: skip
def test_cli_merge_bad_input_exits_2(tmp_path, tiny_model_dir, saved_delta, capsys, args, message):
    argv = ["merge", "--base", str(tiny_model_dir), "--delta", str(saved_delta[0]), *args, "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_merge_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["merge", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert "--alpha" in help_text and "--sparsity" in help_text and "--force" in help_text
