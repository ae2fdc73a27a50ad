"""The demo's model and an edited export load the way every user loads them.

What a user does, and nothing of the project's own loader: `mm4ke-ray rsft` + `mm4ke-ray merge`
on the demo, then plain `AutoTokenizer` + `AutoModelForCausalLM` + greedy `generate` on the
demo's edit prompts. The settings are the demo table's (README): layer 1, lr ~3e-4, τ ~0.05,
K 7, E 3, merged at α 0.3 and sparsity ~0.5.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from mm4ke_ray.demo.build import build_demo

RSFT = ["--layer", "1", "--lr", "3e-4", "--threshold", "0.05", "--steps", "7", "--epochs", "3"]
MERGE = ["--alpha", "0.3", "--sparsity", "0.5"]


@pytest.fixture(scope="module")
def demo():
    return build_demo()  # the default demo, from the shared cache (built once, ~1 min)


def _cli(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mm4ke_ray.cli", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _load_as_users_do(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


@torch.no_grad()
def _greedy(model, tok, prompt: str, answer: str) -> str:
    """The greedy continuation of `prompt`, as long as `answer` is in tokens."""
    n = len(tok(" " + answer, add_special_tokens=False)["input_ids"])
    inputs = tok(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def _locality(edits: list[dict]) -> list[tuple[str, str]]:
    return [
        (item["prompt"], " ".join(item["ground_truth"]) if isinstance(item["ground_truth"], list)
         else item["ground_truth"])
        for e in edits
        for items in e["locality"].values()
        for item in items
    ]


def test_demo_base_round_trips_through_plain_auto_classes(demo):
    from tokenizers import Tokenizer

    tok, model = _load_as_users_do(demo.model_dir)
    saved = Tokenizer.from_file(str(demo.model_dir / "tokenizer.json"))
    world = json.loads((demo.root / "world.json").read_text())
    texts = [f"{f['subject']} {f['value']}" for f in world["facts"]] + world["filler"]
    assert [saved.encode(t).ids for t in texts] == tok(texts)["input_ids"]
    assert tok.unk_token_id not in {i for t in texts for i in tok(t)["input_ids"]}
    edits = json.loads(demo.edits_path.read_text())
    truth = [_greedy(model, tok, e["prompt"], e["ground_truth"][0]) == e["ground_truth"][0] for e in edits]
    new = [_greedy(model, tok, e["prompt"], e["target_new"]) == e["target_new"] for e in edits]
    loc = [_greedy(model, tok, p, a) == a for p, a in _locality(edits)]
    assert sum(truth) >= 0.9 * len(edits), truth
    assert sum(new) <= 0.1 * len(edits), new
    assert sum(loc) >= 0.9 * len(loc), loc


@pytest.mark.slow
def test_edited_export_gives_the_new_targets_to_a_plain_transformers_user(demo, tmp_path):
    delta, merged = tmp_path / "delta", tmp_path / "merged"
    model_dir = str(demo.model_dir)
    _cli("rsft", "--model", model_dir, "--data", str(demo.edits_path), *RSFT, "--quiet",
         "--device", "cpu", "--out", str(delta))
    _cli("merge", "--base", model_dir, "--delta", str(delta), *MERGE, "--device", "cpu",
         "--out", str(merged))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a TokenizerMismatchWarning or any other would fail here
        from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

        assert check_auto_tokenizer(str(merged), strict=True) is None
    tok, model = _load_as_users_do(merged)
    base_tok, base = _load_as_users_do(model_dir)
    edits = json.loads(demo.edits_path.read_text())
    new = [_greedy(model, tok, e["prompt"], e["target_new"]) == e["target_new"] for e in edits]
    pairs = _locality(edits)
    kept = [_greedy(model, tok, p, a) == _greedy(base, base_tok, p, a) for p, a in pairs]
    print(f"plain-transformers user: {sum(new)}/{len(edits)} new targets, "
          f"{sum(kept)}/{len(kept)} locality answers kept")
    assert sum(new) >= 0.9 * len(edits), new
    assert sum(kept) >= 0.8 * len(kept), kept


@pytest.fixture(scope="module")
def word_tokenizer():
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    return build_word_tokenizer(["Brenal Tosk lives in the city of Varnholm .", "user : hi"])


def _pair(arch: str, tok, out):
    from mm4ke_ray.demo.tiny import build_tiny_model, save_pretrained_pair

    return save_pretrained_pair(build_tiny_model(arch, len(tok), hidden=16, layers=1), tok, out)


def test_check_names_cause_and_fix_where_auto_tokenizer_rebuilds(word_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from mm4ke_ray.errors import UserError
    from mm4ke_ray.modeling import load_tokenizer
    from mm4ke_ray.modeling.tokenizer_check import (
        TokenizerMismatchWarning,
        check_auto_tokenizer,
        compare_with_saved,
    )

    qwen = str(_pair("qwen2", word_tokenizer, tmp_path / "qwen2"))
    mismatch = compare_with_saved(AutoTokenizer.from_pretrained(qwen), qwen)
    assert mismatch is not None and mismatch.auto_class == "Qwen2Tokenizer"
    assert mismatch.auto_ids != mismatch.saved_ids
    message = mismatch.message()
    assert "model_type 'qwen2'" in message and "TokenizersBackend.from_pretrained" in message
    with pytest.raises(UserError, match="does not give the saved tokenizer's ids"):
        check_auto_tokenizer(qwen, strict=True)
    with pytest.warns(TokenizerMismatchWarning, match="Qwen2Tokenizer"):
        tok = load_tokenizer(qwen)
    text = "Brenal Tosk lives in Varnholm ."
    assert tok(text)["input_ids"] == word_tokenizer(text)["input_ids"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_check_passes_where_auto_tokenizer_loads_as_saved(word_tokenizer, tmp_path, arch):
    from mm4ke_ray.modeling import load_tokenizer
    from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

    path = str(_pair(arch, word_tokenizer, tmp_path / arch))
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=UserWarning)
        assert check_auto_tokenizer(path, strict=True) is None
        tok = load_tokenizer(path)
    assert type(tok).__name__ == "TokenizersBackend"
    assert tok("Brenal Tosk")["input_ids"] == word_tokenizer("Brenal Tosk")["input_ids"]


def test_no_tokenizer_json_means_nothing_to_compare(tmp_path):
    from mm4ke_ray.modeling.tokenizer_check import compare_with_saved

    assert compare_with_saved(lambda *a, **k: {"input_ids": []}, str(tmp_path)) is None
