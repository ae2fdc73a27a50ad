"""Bad input is refused up front: exit code 2, a message naming what is wrong and how to fix it.

Every case in tests/bad_inputs/ runs through the real CLI entry point in this process, so it can
also check that no Ray was started (no `ray.init`, no raylet/GCS child process) and that nothing
was written to MLflow (the SQLite file's folder is never created) or to the sweep's storage.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import ZSRE
from fault_helpers import free_port

CASES = sorted((Path(__file__).parent / "bad_inputs").glob("*.yaml"))


def test_the_corpus_has_at_least_25_cases():
    assert len(CASES) >= 25


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """The valid tiny model and broken variants of it."""
    root = tmp_path_factory.mktemp("models")
    remote = root / "remote_code"
    shutil.copytree(tiny_model_dir, remote)
    cfg = json.loads((remote / "config.json").read_text())
    # An architecture transformers does not know, whose code ships with the model.
    cfg["model_type"] = "mm4ke_custom_lm"
    cfg["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps(cfg))
    for module in ("configuration_x.py", "modeling_x.py"):
        (remote / module).write_text("raise SystemExit('custom code ran')\n")
    pickle_only = root / "pickle_only"
    shutil.copytree(tiny_model_dir, pickle_only)
    for f in pickle_only.glob("*.safetensors"):
        f.unlink()
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded: refused before reading")
    no_config = root / "no_config"
    shutil.copytree(tiny_model_dir, no_config)
    (no_config / "config.json").unlink()
    # A model type transformers does not know, whose code ships with the tokenizer only.
    tok_remote = root / "tokenizer_remote_code"
    shutil.copytree(tiny_model_dir, tok_remote)
    cfg = json.loads((tok_remote / "config.json").read_text())
    (tok_remote / "config.json").write_text(json.dumps({**cfg, "model_type": "mm4ke_custom_lm"}))
    tok_cfg = json.loads((tok_remote / "tokenizer_config.json").read_text())
    tok_cfg.update(tokenizer_class="XTokenizer", auto_map={"AutoTokenizer": ["tokenization_x.XTokenizer", None]})
    (tok_remote / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (tok_remote / "tokenization_x.py").write_text("raise SystemExit('custom code ran')\n")
    return {"tiny": tiny_model_dir, "remote_code": remote, "pickle_only": pickle_only, "no_config": no_config,
            "tokenizer_remote_code": tok_remote}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fill(value, subs: dict):
    if isinstance(value, str):
        for k, v in subs.items():
            value = value.replace("{" + k + "}", str(v))
        return value
    if isinstance(value, list):
        return [_fill(v, subs) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subs) for k, v in value.items()}
    return value


def _write_edits(tmp: Path, spec: dict | None) -> Path:
    records = json.loads(ZSRE.read_text())[:4]
    spec = spec or {}
    if "records" in spec:
        records = spec["records"]
    if patch := spec.get("patch"):
        rec = records[patch["index"]]
        if "delete" in patch:
            del rec[patch["delete"]]
        rec.update(patch.get("set", {}))
        rec.update({k: text * n for k, (text, n) in (patch.get("repeat") or {}).items()})
    if not spec.get("jsonl"):
        path = tmp / "edits.json"
        path.write_text(json.dumps(records))
        return path
    lines = [json.dumps(r) for r in records]
    if spec.get("truncate_last"):
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    path = tmp / "edits.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _prepare(case: dict, tmp: Path, models: dict) -> list[str]:
    subs = {"tmp": tmp, "free_port": free_port()}
    for rel, text in (case.get("files") or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    base = {
        "name": "bad",
        "model": {"name": str(models[case.get("model", "tiny")])},
        "data": {"edits": str(_write_edits(tmp, case.get("edits"))), "limit": 4},
        "search": {"num_trials": 2, "space": {"layer": {"choices": [0, 1]}}},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow/mlflow.db", "experiment": "bad",
                     "artifact_location": str(tmp / "mlflow" / "artifacts")},
        "storage_path": str(tmp / "ray"),
    }
    config = tmp / "config.yaml"
    if "config_text" in case:
        config.write_bytes(case["config_text"].encode(case.get("config_encoding", "utf-8")))
    else:
        config.write_text(yaml.safe_dump(_fill(_merge(base, case.get("config") or {}), subs)))
    subs["config"] = config
    subs["model"] = models[case.get("model", "tiny")]
    return _fill(case.get("argv") or ["sweep", "{config}"], subs)


def _ray_children() -> list[str]:
    names = []
    for p in psutil.Process().children(recursive=True):
        try:
            names.append(p.name())
        except psutil.NoSuchProcess:
            pass
    return [n for n in names if n.startswith(("raylet", "gcs_server")) or "ray::" in n]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_input_is_refused_with_a_fixable_message(path, tmp_path, models, capsys):
    import ray

    from mm4ke_ray.cli import main

    case = yaml.safe_load(path.read_text())
    argv = _prepare(case, tmp_path, models)
    before = set((tmp_path).iterdir())
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"{path.stem}: exit {code}\n{err}"
    message = err.lower()
    for fragment in [*case["names"], *case["fix"]]:
        assert fragment.lower() in message, f"{path.stem}: {fragment!r} not in:\n{err}"
    assert "traceback" not in (out + err).lower()
    assert not ray.is_initialized() and not _ray_children()
    assert not (tmp_path / "mlflow").exists()  # no SQLite file, no artifacts: nothing in MLflow
    assert not (tmp_path / "ray").exists()  # no sweep folder
    assert set(tmp_path.iterdir()) == before


def test_the_console_script_exits_2_without_a_traceback(tmp_path, models):
    case = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "alpha_equal_1.yaml").read_text())
    argv = _prepare(case, tmp_path, models)
    script = Path(sys.executable).with_name("mm4ke-ray")
    proc = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "search.space.alpha" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


# -- safety at load time (also when preflight is bypassed, e.g. a library caller) ----------------


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_factory):
    import torch

    from mm4ke_ray.errors import UserError
    from mm4ke_ray.modeling import load_model

    folder = tmp_path / "pickled"
    model = tiny_model_factory("qwen2")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle checkpoint, as older repos ship
    with pytest.raises(UserError, match="allow_pickle"):
        load_model(str(folder))
    assert load_model(str(folder), allow_pickle=True) is not None  # the explicit opt-in


def test_remote_code_is_not_run_unless_trusted(models):
    from mm4ke_ray.errors import UserError
    from mm4ke_ray.modeling import load_model

    # modeling_x.py would raise SystemExit if it were imported: the refusal happens before.
    with pytest.raises(UserError, match="trust_remote_code"):
        load_model(str(models["remote_code"]))


def test_a_native_architecture_with_a_leftover_auto_map_is_accepted(tmp_path, tiny_model_dir):
    # transformers uses its own Qwen2 classes then; the repo's code is never imported.
    from mm4ke_ray.config import ModelConfig
    from mm4ke_ray.preflight import model_problems

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "m.X"}}))
    assert model_problems(ModelConfig(name=str(folder))) == ([], cfg["num_hidden_layers"])
