"""`validate --offline` names the model / edit set that would need the network; nothing is downloaded."""

from __future__ import annotations

import yaml

from mm4ke_ray.cli import main

HUB_EDITS = "someorg/somedata/benchmark/edits.json"


def _config(tmp_path, model: str, edits: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "offline", "model": {"name": model}, "data": {"edits": edits},
                                    "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
                                    "search": {"space": {"layer": {"choices": [1]}}}}))
    return str(path)


def _fake_dataset_cache(cache, repo_id: str, filename: str) -> None:
    """The HF cache layout huggingface_hub writes: refs/main → a snapshot holding the file."""
    folder = cache / f"datasets--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40) / filename
    snap.parent.mkdir(parents=True)
    snap.write_text("[]")


def test_offline_names_the_hub_edit_set_missing_from_the_cache_and_plain_validate_notes_it(
        tmp_path, tiny_model_dir, capsys, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, str(tiny_model_dir), HUB_EDITS)

    assert main(["validate", "--offline", config]) == 1
    err = capsys.readouterr().err
    assert f"edits {HUB_EDITS!r}" in err and "not in the Hugging Face cache" in err
    assert "model" not in err.split("needs the network for", 1)[1]  # the local model needs nothing

    assert main(["validate", config]) == 0  # plain validate: ok, with the note
    out = capsys.readouterr()
    assert "needs the network" in out.err and ": ok (" in out.out
    assert not any(cache.iterdir())  # nothing was downloaded

    _fake_dataset_cache(cache, "someorg/somedata", "benchmark/edits.json")
    assert main(["validate", "--offline", config]) == 0
    assert "needs the network" not in capsys.readouterr().err


def test_offline_names_a_hub_model_missing_from_the_cache(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from mm4ke_ray.commands.validate import network_needs
    from mm4ke_ray.config import load_config

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    config = load_config(_config(tmp_path, "someorg/not-cached-model", "demo"))
    assert network_needs(config) == ["model 'someorg/not-cached-model' (hub model, not in the Hugging Face cache)"]
