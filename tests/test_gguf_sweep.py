"""A sweep whose config names a .gguf as model.name (issue 22 §1), on a real local Ray.

The Ray workers resolve the GGUF themselves (to the same cached folder: one dequantization), the
sweep's candidates are scored, and its parent run's fingerprint names the GGUF's digest.
"""

from __future__ import annotations

import json

import pytest
from fault_helpers import sweep_dict
from gguf_files import tiny_llama_gguf, zsre_texts

from mm4ke_ray.config import validate_config
from mm4ke_ray.modeling.gguf import CACHE_DIR, file_sha256
from mm4ke_ray.schema import Tag


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    """MM4KE_CACHE for this module, set before its Ray starts (its workers inherit it)."""
    root = tmp_path_factory.mktemp("gguf-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MM4KE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def swept(gguf_cache, ray_2_cpus, tmp_path_factory, zsre_raw, tiny_model_dir):
    from mm4ke_ray.search.driver import run_sweep

    tmp = tmp_path_factory.mktemp("gguf-sweep")
    _, _, path = tiny_llama_gguf(tmp / "model", zsre_texts(zsre_raw))
    data = sweep_dict(tmp, tiny_model_dir, "gguf", trials=1, extra=1, space={"layer": {"choices": [0, 1]}})
    data["model"]["name"] = str(path)
    config = validate_config(data)
    return path, config, run_sweep(config)


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_on_a_gguf_model_scores_its_candidates_and_fingerprints_the_digest(swept, gguf_cache):
    from mlflow import MlflowClient

    path, config, outcome = swept
    assert len(outcome.rows) == 2 and all(r.get("edit_score") is not None for r in outcome.rows)
    folders = [p for p in (gguf_cache / CACHE_DIR).iterdir() if not p.name.startswith(".")]
    assert [p.name for p in folders] == [f"tiny-llama.F32-{file_sha256(path)[:16]}"]
    tags = MlflowClient(config.tracking.uri).get_run(outcome.parent_run_id).data.tags
    fields = json.loads(tags[Tag.FINGERPRINT_FIELDS])
    assert fields["model.gguf_sha256"] == file_sha256(path) and fields["model.name"] == path.name


@pytest.mark.ray
@pytest.mark.slow
def test_an_edited_gguf_model_exports_as_a_plain_folder_whose_card_names_the_quantization(swept, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mm4ke_ray.cli import main

    path, config, outcome = swept
    out = tmp_path / "export"
    assert main(["export", "--tracking-uri", config.tracking.uri, "--sweep", outcome.parent_run_id,
                 "--pick", outcome.rows[0]["candidate"], "--out", str(out), "--device", "cpu"]) == 0
    recipe = json.loads((out / "mm4ke_merge.json").read_text())
    assert recipe["base_model"] == str(path)
    assert recipe["base_gguf"]["sha256"] == file_sha256(path) and recipe["base_gguf"]["quantization"] == "F32"
    card = (out / "README.md").read_text()
    assert "**Base from GGUF:** `tiny-llama.F32.gguf`" in card and "dequantized to float32" in card
    assert not list(out.glob("*.gguf")) and list(out.glob("*.safetensors"))
    AutoTokenizer.from_pretrained(out)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2
