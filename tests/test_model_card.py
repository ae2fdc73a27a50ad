"""The exported model card: Hub front matter, a load-and-generate snippet that runs, the demo note."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from mm4ke_ray.export.card import hub_id, is_demo_model, model_card


def _recipe(base_model: str, edits: str = "/data/zsre.json", prompt_format: str = "plain") -> dict:
    metrics = {"edit_succ": 90.0, "edit_score": 0.9, "general_score": 0.95, "combined_score": 0.925}
    return {
        "mm4ke_ray_version": "0.0.0",
        "exported_at": "2026-12-02T15:00:00+00:00",
        "base_model": base_model,
        "merge": {"alpha": 0.3, "delta_scale": 0.7, "sparsity": 0.5, "density": 0.5, "method": "top_p", "seed": 0,
                  "dtype": "float32", "tensors": ["model.layers.1.mlp.down_proj.weight"]},
        "rsft": {"layer": 1, "threshold": 0.1, "steps": 2, "epochs": 2, "lr": 3e-3, "optimizer": "adamw"},
        "delta": {"sha256": "ab" * 32},
        "edits": {"source": edits, "format": None, "limit": 5, "count": 5},
        "evaluation": {"protocol": "sequential", "prompt_format": prompt_format},
        "source": {"tracking_uri": "sqlite:///runs/mlflow.db", "experiment_id": "1", "experiment_name": "demo",
                   "sweep_name": "demo", "sweep_run_id": "r" * 32, "candidate": "t1-c0", "candidate_run_id": "c" * 32,
                   "kind": "sampled", "trial_id": "t1", "delta_artifact": "deltas/t1/delta.safetensors",
                   "git_revision": "abc"},
        "recorded_metrics": metrics,
        "compared": {"base": metrics, "pure_rsft": metrics},
        "verification": {"status": "passed", "tolerance": 1e-4, "max_abs_diff": 0.0, "metrics": {},
                         "weights": {"unchanged": 10}},
    }


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_hub_base_is_named_with_the_merge_relation_and_the_experiment_by_name():
    card = model_card(_recipe("Qwen/Qwen2.5-7B-Instruct", edits="zjunlp/KnowEdit"))
    meta = _front_matter(card)
    assert meta["base_model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "transformers"
    assert "knowledge-editing" in meta["tags"]
    assert meta["datasets"] == ["zjunlp/KnowEdit"]
    assert "experiment `demo` (id 1)" in card
    assert "toy model" not in card


def test_a_local_base_is_left_out_with_a_note_and_the_demo_model_is_said_to_be_a_toy(tmp_path):
    local = model_card(_recipe(str(tmp_path / "my-model")))
    assert "base_model" not in _front_matter(local)
    assert "base_model left out: the base is a local path" in local
    assert "datasets" not in _front_matter(local)  # a local edit file is no hub dataset

    demo = tmp_path / "demo-123"
    (demo / "model").mkdir(parents=True)
    for name in ("manifest.json", "world.json"):
        (demo / name).write_text("{}")
    assert is_demo_model(str(demo / "model")) and not is_demo_model(str(tmp_path / "my-model"))
    card = model_card(_recipe(str(demo / "model")))
    assert "the base is the demo's toy model" in card
    assert "built by `mm4ke-ray demo` (the project's licence, Apache-2.0)" in card


def test_a_path_in_the_hf_cache_gives_the_hub_id():
    path = "/root/.cache/huggingface/hub/models--Qwen--Qwen2.5-0.5B/snapshots/0123abcd"
    assert hub_id(path) == "Qwen/Qwen2.5-0.5B"
    assert hub_id("./local/model") is None


def test_the_how_to_use_snippet_runs_as_pasted_from_inside_the_directory(tiny_model_dir, tmp_path):
    # The export directory is a saved Hugging Face model + tokenizer, as tiny_model_dir is.
    recipe = _recipe(str(tiny_model_dir))
    recipe["edits"]["examples"] = [{"prompt": "The capital of Norvia is", "target": "Kell", "generated": "Kell",
                                    "matches": True}]
    card = model_card(recipe)
    code = re.search(r"## How to use\n\n.*?```python\n(.*?)```", card, re.S).group(1)
    assert "text = 'The capital of Norvia is'" in code and "'Kell'" in code  # a real edited fact
    script = tmp_path / "snippet.py"
    # The snippet as pasted, then a check that it generated new tokens.
    script.write_text(code + 'assert out.shape[1] > inputs["input_ids"].shape[1]\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tiny_model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_card_says_what_was_edited_by_example_and_the_base_licence(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    recipe = _recipe(str(base))
    recipe["edits"]["examples"] = [
        {"prompt": f"Q{i} | is", "target": f"A{i}", "generated": "A0" if i == 0 else "other", "matches": i == 0}
        for i in range(3)]
    card = model_card(recipe)
    assert _front_matter(card)["license"] == "apache-2.0"
    assert "Licence of the base model: `apache-2.0`" in card
    assert "The first 3 of the 5 edits" in card
    assert "| Q0 \\| is | A0 | A0 | yes |" in card and "| Q2 \\| is | A2 | other | no |" in card
    unknown = model_card(_recipe(str(tmp_path / "no-card")))
    assert "license" not in _front_matter(unknown) and "Licence of the base model: not known here" in unknown


def test_the_card_shows_both_metric_families_and_the_per_kind_means():
    recipe = _recipe("Qwen/Qwen2.5-7B-Instruct")
    recipe["recorded_metrics"] = {**recipe["recorded_metrics"], "gen.edit_succ": 40.0,
                                  "portability.Reasoning": 12.5, "gen.locality.Forgetfulness": 77.0}
    rows = [line for line in model_card(recipe).splitlines() if line.startswith("| ")]
    # Each edit number names its family (issue 23).
    for key, value in (("Edit Succ. (%), generated (WILD)", "40"), ("portability.Reasoning, teacher-forced", "12.5"),
                       ("locality.Forgetfulness, generated (WILD)", "77"), ("Edit Succ. (%), teacher-forced", "")):
        assert any(row.startswith(f"| {key} |") and value in row for row in rows), key


def test_the_card_states_the_definitions_that_produced_the_numbers():
    recipe = _recipe("Qwen/Qwen2.5-7B-Instruct")
    recipe["evaluation"].update(mode="both", edit_mode="generation", aggregation="record: mean of its per-kind means",
                                edit_definitions="2", generation_match="equals", generation_stop="wild",
                                generation_stop_rule="a sentence-ending '.'", generation_max_new_tokens=64,
                                generation_extra_tokens=None)
    card = model_card(recipe)
    assert "computed from the **generation** metrics" in card
    assert "record: mean of its per-kind means (definitions version 2)" in card
    assert "match `equals`, stop `wild` (a sentence-ending '.'), up to 64 new tokens" in card
    # A sweep from before the definitions were recorded says so.
    old = model_card(_recipe("Qwen/Qwen2.5-7B-Instruct"))
    assert "unknown (definitions version 1)" in old and "Generated answers" not in old
    before = _recipe("Qwen/Qwen2.5-7B-Instruct")
    before["evaluation"].update(mode="both", generation_match="starts_with", generation_extra_tokens=4)
    assert ("match `starts_with`, stop `newline` (not recorded: a sweep from before issue 23), at most the "
            "target's tokens + 4") in model_card(before)
