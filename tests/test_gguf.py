"""Models from GGUF files (issue 22 §1), on a small GGUF written here from a tiny Llama.

The .gguf dequantizes once into a cached folder that plain AutoModelForCausalLM/AutoTokenizer
load, with the source model's logits and the source tokenizer's ids; the second call reuses it;
two processes asking at once leave one folder; a GGUF of an architecture transformers cannot
load, or a file that is no GGUF, is refused naming the file; the fingerprint names the digest
and the model card the quantization.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gguf_files import tiny_llama_gguf, write_llama_gguf, zsre_texts

from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling import load_model, load_tokenizer
from mm4ke_ray.modeling.gguf import INFO_FILE, dequantized_folder, file_sha256, read_gguf_info
from mm4ke_ray.modeling.loading import check_model_source

TEXTS = ("What is the capital of France? Paris.", "Which river flows through Warsaw ? Vistula",
         "The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def _made(tmp_path_factory, zsre_raw):
    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf"), [*zsre_texts(zsre_raw), *TEXTS])


@pytest.fixture(scope="module")
def bpe(_made):
    return _made[1]


@pytest.fixture(scope="module")
def tiny_gguf(_made):
    """(source model, path of its F32 GGUF)."""
    return _made[0], _made[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MM4KE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_gguf_dequantizes_once_into_a_folder_plain_transformers_loads(tiny_gguf, bpe, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

    source, path = tiny_gguf
    digest = file_sha256(path)
    folder = dequantized_folder(path)
    assert folder == cache / "gguf" / f"tiny-llama.F32-{digest[:16]}"
    record = json.loads((folder / INFO_FILE).read_text())
    assert record["sha256"] == digest and record["architecture"] == "llama"
    assert record["quantization"] == "F32" and record["dequantized_to"] == "float32"

    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert check_auto_tokenizer(str(folder), strict=True) is None
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == bpe.encode(text).ids  # the GGUF's tokenizer is the one it was written from
        batch = torch.tensor([ids])
        with torch.no_grad():
            assert torch.equal(plain(batch).logits, source(batch).logits)

    # Second call, and the loaders every command uses: the same folder, not written again.
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns, weights.stat().st_ino
    assert dequantized_folder(path) == folder
    loaded, loaded_tok = load_model(str(path)), load_tokenizer(str(path))
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == before
    batch = torch.tensor([bpe.encode(TEXTS[0]).ids])
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, source(batch).logits)
    assert loaded_tok(TEXTS[1], add_special_tokens=False)["input_ids"] == bpe.encode(TEXTS[1]).ids
    assert sorted(p.name for p in (cache / "gguf").iterdir() if not p.name.endswith(".lock")) == [folder.name]


def test_two_processes_dequantizing_at_once_leave_one_complete_folder(tiny_gguf, cache):
    from mm4ke_ray.modeling.gguf import cache_folder

    _, path = tiny_gguf
    final = cache_folder(path)
    stale = final.parent / f".{final.name}.tmp-host-1-dead"  # as a killed dequantization leaves it
    stale.mkdir(parents=True)
    code = ("import sys; from mm4ke_ray.modeling.gguf import dequantized_folder; "
            "print(dequantized_folder(sys.argv[1]))")
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    left = sorted(p.name for p in (cache / "gguf").iterdir() if not p.name.endswith(".lock"))
    assert left == [Path(outs[0]).name]  # no half-written sibling left behind
    assert json.loads((Path(outs[0]) / INFO_FILE).read_text())["sha256"] == file_sha256(path)


def test_an_architecture_transformers_cannot_load_is_refused_naming_file_and_architecture(tiny_gguf, bpe, tmp_path, cache):
    from mm4ke_ray.config import ModelConfig
    from mm4ke_ray.preflight import model_problems

    source, _ = tiny_gguf
    odd = write_llama_gguf(source, bpe, tmp_path / "odd.gguf", architecture="tinyfoo")
    for call in (check_model_source, load_model, load_tokenizer, dequantized_folder):
        with pytest.raises(UserError, match=r"odd\.gguf.*GGUF architecture 'tinyfoo' cannot be loaded by transformers"):
            call(str(odd))
    problems, _ = model_problems(ModelConfig(name=str(odd)))
    assert len(problems) == 1 and problems[0].startswith("model.name:") and "tinyfoo" in problems[0]
    assert not (cache / "gguf").exists() or not any((cache / "gguf").glob("odd-*"))


def test_a_missing_or_broken_gguf_is_refused_before_loading(tmp_path, cache):
    with pytest.raises(UserError, match="does not exist"):
        check_model_source(str(tmp_path / "absent.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UserError, match=r"broken\.gguf' is not a readable GGUF file"):
        load_model(str(broken))


def test_preflight_reads_the_layer_count_from_the_gguf(tiny_gguf, cache):
    from mm4ke_ray.config import ModelConfig
    from mm4ke_ray.preflight import model_problems

    _, path = tiny_gguf
    assert model_problems(ModelConfig(name=str(path))) == ([], 2)
    assert read_gguf_info(path).block_count == 2


def test_the_fingerprint_names_the_gguf_digest_not_its_path(tiny_gguf, bpe, tmp_path, tiny_model_dir, cache):
    import shutil

    from fault_helpers import sweep_dict

    from mm4ke_ray.config import validate_config
    from mm4ke_ray.fingerprint import differences, fingerprint_fields

    _, path = tiny_gguf
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)

    def fields(model: Path) -> dict:
        data = sweep_dict(tmp_path, tiny_model_dir, "g")
        data["model"]["name"] = str(model)
        return fingerprint_fields(validate_config(data))

    here, there = fields(path), fields(copy)
    assert here["model.gguf_sha256"] == file_sha256(path) and here["model.name"] == path.name
    assert differences(here, there) == []  # the same file on another machine's path compares
    from mm4ke_ray.demo.tiny import build_tiny_model

    retrained = build_tiny_model("llama", bpe.get_vocab_size(), hidden=64, layers=2, seed=1)
    (tmp_path / "other").mkdir()
    other = write_llama_gguf(retrained, bpe, tmp_path / "other" / path.name)  # same name, other weights
    assert [k for k, _, _ in differences(here, fields(other))] == ["model.gguf_sha256"]


def test_the_model_card_says_the_base_was_a_quantized_gguf_dequantized_to_float32(tiny_gguf, cache):
    from test_model_card import _recipe

    from mm4ke_ray.export.card import model_card
    from mm4ke_ray.modeling.gguf import gguf_provenance

    _, path = tiny_gguf
    recipe = {**_recipe(str(path)), "base_gguf": gguf_provenance(str(path))}
    card = model_card(recipe)
    assert "**Base from GGUF:** `tiny-llama.F32.gguf` (architecture `llama`, quantized **F32**" in card
    assert "dequantized to float32" in card and "normal Hugging Face folder" in card
    assert file_sha256(path) in card
    assert "Base from GGUF" not in model_card(_recipe("Qwen/Qwen2.5-7B-Instruct"))
    assert gguf_provenance("Qwen/Qwen2.5-7B-Instruct") is None


def test_validate_checks_a_configs_layers_against_the_gguf(tiny_gguf, tmp_path, cache, capsys):
    import yaml

    from mm4ke_ray.cli import main

    _, path = tiny_gguf
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": str(path)}, "data": {"edits": str(tmp_path / "none.json")},
                                      "search": {"space": {"layer": {"choices": [1, 9]}}}}))
    assert main(["validate", "--offline", str(config)]) == 2
    err = capsys.readouterr().err
    assert "search.space.layer" in err and "[9]" in err and "model.name" not in err


def test_the_planner_reads_a_ggufs_shape_from_its_dequantized_folder(tiny_gguf, cache):
    from mm4ke_ray.planning.model_size import read_model_shape

    source, path = tiny_gguf
    shape = read_model_shape(str(path))
    assert (shape.layers, shape.hidden, shape.vocab) == (2, 64, source.config.vocab_size)
    assert shape.params == sum(p.numel() for p in source.parameters())
    assert str(cache / "gguf") in shape.source
