"""R-SFT (Algorithm 1): step counts, the answer-only loss, the delta, reproducibility, restoration."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling import encode_example, mlp_parameter_names
from mm4ke_ray.modeling.encoding import encode_training_example
from mm4ke_ray.rsft import DivergedError, RSFTConfig, run_rsft

N = 4


HUGE = 1e9


@pytest.fixture(scope="module")
def records(zsre_raw) -> list[EditRecord]:
    return [
        EditRecord(prompt=r["prompt"], target_new=r["target_new"], source=f"zsre:{i}")
        for i, r in enumerate(zsre_raw[:N])
    ]


@pytest.fixture(scope="module", params=["qwen2", "llama", "gpt2"])
def model(request, tiny_model_factory):
    return tiny_model_factory(request.param, hidden=32, layers=3, seed=2)


@pytest.fixture(scope="module")
def qwen(tiny_model_factory):
    return tiny_model_factory("qwen2", hidden=32, layers=3, seed=3)


def cfg(**kw) -> RSFTConfig:
    return RSFTConfig(**{"layer": 1, "epochs": 2, "steps": 3, "lr": 1e-3, "threshold": 0.0, **kw})


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_huge_threshold_takes_no_step(model, tiny_tokenizer, records):
    result = run_rsft(model, tiny_tokenizer, records, cfg(threshold=HUGE))
    assert result.updates == 0
    assert len(result.samples) == 2 * N
    assert all(s["steps"] == 0 and len(s["losses"]) == 1 for s in result.samples)
    assert result.delta and all(torch.count_nonzero(d) == 0 for d in result.delta.values())


def test_zero_threshold_takes_every_step(model, tiny_tokenizer, records):
    config = cfg(threshold=0.0)
    base = _snapshot(model)
    model.requires_grad_(False)
    model.get_output_embeddings().weight.requires_grad_(True)  # a mixed pattern to restore
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = run_rsft(model, tiny_tokenizer, records, config)
    assert result.updates == config.epochs * N * config.steps
    assert [(s["index"], s["epoch"]) for s in result.samples] == [
        (i, e) for e in (1, 2) for i in range(N)
    ]
    # K updates and no final-loss forward by default: K losses, each measured before an update.
    assert all(s["steps"] == 3 and len(s["losses"]) == 3 for s in result.samples)
    # Only layer 1's MLP is in the delta, every tensor moved, float32 on CPU.
    assert (
        sorted(result.delta)
        == sorted(mlp_parameter_names(model, 1))
        == sorted(result.trained_tensors)
    )
    assert all(".1.mlp." in n for n in result.delta)
    for d in result.delta.values():
        assert d.dtype == torch.float32 and d.device.type == "cpu" and torch.count_nonzero(d) > 0
    # The model comes back bit-exactly, with its requires_grad flags, no grads, in eval mode.
    after = model.state_dict()
    assert all(torch.equal(after[n], base[n]) for n in base)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(p.grad is not None for p in model.parameters())
    assert not model.training


def test_training_lowers_the_answer_loss(qwen, tiny_tokenizer, records):
    result = run_rsft(
        qwen, tiny_tokenizer, records[:1], cfg(epochs=1, steps=6, lr=1e-2), final_loss=True
    )
    losses = result.samples[0]["losses"]
    assert len(losses) == 7  # the loss after the 6th update, on request
    assert losses[-1] < losses[0] - 0.5


def test_early_stop_threshold_between_losses(qwen, tiny_tokenizer, records):
    first = run_rsft(qwen, tiny_tokenizer, records[:1], cfg(epochs=1, steps=6, lr=1e-2)).samples[0][
        "losses"
    ]
    tau = (first[2] + first[3]) / 2  # reached after exactly 3 updates
    again = run_rsft(
        qwen, tiny_tokenizer, records[:1], cfg(epochs=1, steps=6, lr=1e-2, threshold=tau)
    ).samples[0]
    assert again["steps"] == 3 and again["losses"] == first[:4]


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_loss_is_mean_nll_over_answer_tokens_only(qwen, tiny_tokenizer, records, prompt_format):
    result = run_rsft(
        qwen, tiny_tokenizer, records, cfg(threshold=HUGE, prompt_format=prompt_format, epochs=1)
    )
    for rec, sample in zip(records, result.samples, strict=True):
        # Training's encoding: in chat format the end-of-turn token is supervised too.
        enc = encode_training_example(tiny_tokenizer, rec.prompt, rec.target_new, prompt_format)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logits = qwen(input_ids=ids).logits[0]
        s = enc.answer_start
        answer_only = F.cross_entropy(logits[s - 1 : -1], ids[0, s:]).item()
        whole = F.cross_entropy(logits[:-1], ids[0, 1:]).item()
        assert sample["losses"][0] == pytest.approx(answer_only, rel=1e-5)
        assert abs(whole - answer_only) > 1e-3


def test_same_seed_gives_bit_identical_delta(model, tiny_tokenizer, records):
    a = run_rsft(model, tiny_tokenizer, records, cfg(seed=7))
    b = run_rsft(model, tiny_tokenizer, records, cfg(seed=7))
    assert a.delta.keys() == b.delta.keys()
    assert all(torch.equal(a.delta[n], b.delta[n]) for n in a.delta)
    assert a.samples == b.samples


def test_prefix_cache_matches_naive_loop(model, tiny_tokenizer, records):
    config = cfg(layer=[2, 1])
    fast = run_rsft(model, tiny_tokenizer, records, config)
    slow = run_rsft(model, tiny_tokenizer, records, config, use_prefix_cache=False)
    assert fast.layers == [1, 2] and len(fast.delta) == len(mlp_parameter_names(model, [1, 2]))
    # The suffix stepper runs the head on the answer rows only: the same sums in another order,
    # so float32 rounding (~1e-7 absolute after 24 AdamW updates) but no more; a wrong prefix or
    # mask moves the delta by O(its own size).
    for n in slow.delta:
        diff = fast.delta[n] - slow.delta[n]
        assert diff.norm() <= 1e-5 * slow.delta[n].norm(), n
        assert diff.abs().max() <= 1e-6, n
    assert [s["steps"] for s in fast.samples] == [s["steps"] for s in slow.samples]


def test_sgd_step_is_literal_gradient_descent(qwen, tiny_tokenizer, records):
    lr = 0.5
    result = run_rsft(
        qwen, tiny_tokenizer, records[:1], cfg(optimizer="sgd", lr=lr, epochs=1, steps=1)
    )
    assert result.updates == 1
    names = mlp_parameter_names(qwen, 1)
    params = dict(qwen.named_parameters())
    enc = encode_example(tiny_tokenizer, records[0].prompt, records[0].target_new)
    ids, s = torch.tensor([enc.input_ids]), enc.answer_start
    for n in names:
        params[n].requires_grad_(True)
    try:
        F.cross_entropy(qwen(input_ids=ids).logits[0, s - 1 : -1], ids[0, s:]).backward()
        for n in names:
            assert torch.allclose(result.delta[n], -lr * params[n].grad, atol=1e-7, rtol=1e-4), n
    finally:
        for n in names:
            params[n].requires_grad_(False)
            params[n].grad = None


def test_divergence_raises_and_restores_model(qwen, tiny_tokenizer, records):
    base = _snapshot(qwen)
    with pytest.raises(DivergedError, match=r"record \d+ \(zsre:\d+\), epoch 1, step \d+") as info:
        run_rsft(qwen, tiny_tokenizer, records, cfg(optimizer="sgd", lr=1e30, steps=6))
    assert isinstance(info.value, RuntimeError) and info.value.epoch == 1
    assert all(torch.equal(qwen.state_dict()[n], base[n]) for n in base)


def test_progress_reports_every_record_epoch(qwen, tiny_tokenizer, records):
    seen, trainable = [], []

    def progress(entry):
        seen.append(entry)
        trainable.append({n for n, p in qwen.named_parameters() if p.requires_grad})

    run_rsft(qwen, tiny_tokenizer, records, cfg(threshold=HUGE), progress=progress)
    assert trainable[0] == set(mlp_parameter_names(qwen, 1))  # during training: only the MLP
    assert [e["done"] for e in seen] == list(range(1, 2 * N + 1))
    assert all(e["total"] == 2 * N for e in seen)


def test_result_as_json_round_trips(qwen, tiny_tokenizer, records):
    result = run_rsft(qwen, tiny_tokenizer, records[:2], cfg(epochs=1, steps=2))
    data = json.loads(json.dumps(result.as_json()))
    assert data["updates"] == 4 and data["num_records"] == 2 and data["layers"] == [1]
    assert data["config"]["optimizer"] == "adamw" and "answer tokens" in data["loss"]
    assert RSFTConfig(**data["config"]) == result.config


def test_layer_out_of_range_is_refused_up_front(qwen, tiny_tokenizer, records):
    with pytest.raises(UserError, match="layer 3 is out of range: the model has 3 layers"):
        run_rsft(qwen, tiny_tokenizer, records, cfg(layer=3))


def test_empty_answer_names_the_record(qwen, tiny_tokenizer, records):
    bad = [records[0], EditRecord(prompt="who?", target_new="", source="f.json:1")]
    with pytest.raises(UserError, match=r"edit record 1 \(f.json:1\)"):
        run_rsft(qwen, tiny_tokenizer, bad, cfg())


def test_config_defaults_are_the_papers():
    c = RSFTConfig()
    assert (c.layer, c.epochs, c.steps, c.lr, c.threshold, c.optimizer, c.prompt_format) == (
        5,
        5,
        6,
        5e-4,
        0.1,
        "adamw",
        "plain",
    )
    assert RSFTConfig(layer=[7, 6]).layers == [6, 7]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("steps", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("threshold", -0.1),
        ("layer", -1),
        ("layer", []),
        ("layer", [5, 5]),
        ("optimizer", "adam"),
        ("prompt_format", "raw"),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        RSFTConfig(**{field: value})
    errors = info.value.errors()
    assert errors[0]["loc"][0] == field
    if errors[0]["type"] == "value_error":
        assert field in errors[0]["msg"]


def test_config_is_frozen_and_strict():
    with pytest.raises(ValidationError, match="extra"):
        RSFTConfig(epoch=3)
    with pytest.raises(ValidationError):
        RSFTConfig().lr = 1.0


def _cli(tmp_path, tiny_model_dir, *extra: str) -> int:
    from conftest import ZSRE

    from mm4ke_ray.cli import main

    return main(
        [
            "rsft",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(ZSRE),
            "--limit",
            "3",
            "--layer",
            "1",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--threshold",
            "0",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )


def test_cli_writes_delta_and_log(tmp_path, tiny_model_dir, capsys):
    from mm4ke_ray.delta import load_delta

    out = tmp_path / "run"
    assert _cli(tmp_path, tiny_model_dir, "--out", str(out)) == 0
    delta, meta = load_delta(out)
    assert sorted(delta) == [f"model.layers.1.mlp.{m}_proj.weight" for m in ("down", "gate", "up")]
    assert (
        meta["base_model"] == str(tiny_model_dir)
        and meta["layers"] == [1]
        and meta["config"]["steps"] == 2
    )
    log = json.loads((out / "rsft.json").read_text())
    assert log["updates"] == 6 and log["num_records"] == 3 and len(log["samples"]) == 3
    assert log["config"]["threshold"] == 0 and log["data_format"]
    assert "6 update(s)" in capsys.readouterr().out
    # A second run into the same directory is refused unless --force.
    assert _cli(tmp_path, tiny_model_dir, "--out", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert _cli(tmp_path, tiny_model_dir, "--out", str(out), "--force", "--optimizer", "sgd") == 0


def test_cli_refuses_bad_options_before_loading(tmp_path, tiny_model_dir, capsys):
    assert (
        _cli(tmp_path, tiny_model_dir, "--out", str(tmp_path / "a"), "--lr", "-1", "--epochs", "0")
        == 2
    )
    err = capsys.readouterr().err
    assert "--lr: lr must be a finite number > 0" in err and "--epochs" in err
    assert _cli(tmp_path, tiny_model_dir, "--out", str(tmp_path / "b"), "--layer", "9") == 2
    assert "layer 9 is out of range: the model has 4 layers" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_final_loss_can_be_skipped(qwen, tiny_tokenizer, records):
    with_final = run_rsft(qwen, tiny_tokenizer, records[:2], cfg(), final_loss=True)
    without = run_rsft(qwen, tiny_tokenizer, records[:2], cfg())  # the default: no extra forward
    assert all(len(s["losses"]) == 4 for s in with_final.samples)
    assert all(len(s["losses"]) == 3 and s["steps"] == 3 for s in without.samples)
    assert [s["losses"][:3] for s in with_final.samples] == [s["losses"] for s in without.samples]
    assert all(torch.equal(with_final.delta[n], without.delta[n]) for n in without.delta)
    assert without.as_json()["final_loss"] is False


def test_a_kept_model_trains_the_next_run_as_a_fresh_load_does(tmp_path, tiny_model_dir, zsre_raw):
    """Runner 'train-local' keeps the loaded base in the trial process (`keep_loaded`): the second
    run reads no model and its delta is bit-identical to that of a run on a freshly loaded base."""
    from mm4ke_ray.data import write_edit_records
    from mm4ke_ray.delta import load_delta
    from mm4ke_ray.rsft import to_folder

    edits = write_edit_records([EditRecord(prompt=r["prompt"], target_new=r["target_new"], source=f"zsre:{i}")
                                for i, r in enumerate(zsre_raw[:N])], tmp_path / "edits.json")
    args = {"model": str(tiny_model_dir), "edits": str(edits), "device": "cpu"}
    first = to_folder.rsft_to_folder(tmp_path / "a", config=cfg(lr=1e-2), keep_loaded=True, **args)
    kept = next(iter(to_folder._kept.values()))[1]
    second = to_folder.rsft_to_folder(tmp_path / "b", config=cfg(lr=3e-3, layer=2), keep_loaded=True, **args)
    assert next(iter(to_folder._kept.values()))[1] is kept  # the same loaded model, trained again
    fresh = to_folder.rsft_to_folder(tmp_path / "c", config=cfg(lr=3e-3, layer=2), **args)
    assert not to_folder._kept  # a run that keeps nothing frees the kept model
    assert first.result.updates > 0 and second.result.updates == fresh.result.updates > 0
    kept_delta, fresh_delta = load_delta(tmp_path / "b")[0], load_delta(tmp_path / "c")[0]
    assert kept_delta.keys() == fresh_delta.keys()
    assert all(torch.equal(kept_delta[k], fresh_delta[k]) for k in kept_delta)
