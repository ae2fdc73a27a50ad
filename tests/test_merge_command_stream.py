"""`mm4ke-ray merge` writes tensor by tensor (issue 17 point 4) and atomically (issue 16 point 4).

The command's output equals the in-memory merge (`build_merged` + `save_merged`) bit for bit, in
the same dtype (float32 by default, bf16 upcast as before), keeps a sharded base sharded, never
builds the model for a delta (transformers' model code is not even imported), falls back to
building it for a `.bin`-only base, and a SIGKILLed merge leaves no half-written --out.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors import safe_open

from mm4ke_ray.cli import main
from mm4ke_ray.delta import save_delta
from mm4ke_ray.merge import MERGE_INFO_FILE, build_merged, save_merged
from mm4ke_ray.modeling import mlp_parameter_names


def _tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def _save(model, tokenizer, out, **kw):
    out.mkdir(parents=True)
    model.save_pretrained(out, **kw)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def base_and_delta(tmp_path_factory, tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory("qwen2", hidden=64, layers=4)
    tmp = tmp_path_factory.mktemp("mcs")
    base = _save(model, tiny_tokenizer, tmp / "base")
    g = torch.Generator().manual_seed(5)
    params = dict(model.named_parameters())
    names = mlp_parameter_names(model, 2)
    save_delta(tmp / "delta", {n: torch.randn(params[n].shape, generator=g) * 0.05 for n in names}, {"layer": 2})
    return model, base, tmp / "delta", names


def _argv(base, delta, out, *extra):
    return ["merge", "--base", str(base), "--delta", str(delta), "--alpha", "0.3", "--sparsity", "0.4",
            "--out", str(out), "--device", "cpu", *extra]  # fmt: skip


def _reference(base, delta, tmp_path, dtype="float32"):
    ref = tmp_path / f"ref-{dtype}"
    r = build_merged(str(base), delta_dir=delta, alpha=0.3, sparsity=0.4, dtype=dtype)
    save_merged(r.model, str(base), ref, r.info)
    return _tensors(ref)


def _assert_equal(a, b):
    assert set(a) <= set(b) or set(b) <= set(a)
    for name in set(a) & set(b):
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_merge_command_streams_without_building_the_model(base_and_delta, tmp_path):
    _, base, delta, names = base_and_delta
    out = tmp_path / "merged"
    code = textwrap.dedent(f"""
        import sys
        from mm4ke_ray.cli import main
        rc = main({_argv(base, delta, out)!r})
        built = sorted(m for m in sys.modules if m.startswith(("transformers.modeling_utils", "transformers.models.qwen2")))
        print("BUILT", built)
        sys.exit(rc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BUILT []" in done.stdout, done.stdout
    _assert_equal(_tensors(out), _reference(base, delta, tmp_path))
    info = json.loads((out / MERGE_INFO_FILE).read_text())
    assert info["base"] == str(base) and info["dtype"] == "float32" and sorted(info["tensors"]) == sorted(names)
    assert info["delta_metadata"] == {"layer": 2}
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]


def test_bf16_base_is_upcast_as_before_unless_dtype_says_otherwise(base_and_delta, tmp_path, tiny_tokenizer):
    model, _, delta, _ = base_and_delta
    base16 = _save(copy.deepcopy(model).to(torch.bfloat16), tiny_tokenizer, tmp_path / "base16")
    out = tmp_path / "m32"
    assert main(_argv(base16, delta, out)) == 0
    got = _tensors(out)
    assert all(t.dtype == torch.float32 for t in got.values())
    _assert_equal(got, _reference(base16, delta, tmp_path))
    out16 = tmp_path / "m16"
    assert main(_argv(base16, delta, out16, "--dtype", "bfloat16")) == 0
    got16 = _tensors(out16)
    assert all(t.dtype == torch.bfloat16 for t in got16.values())
    _assert_equal(got16, _reference(base16, delta, tmp_path, "bfloat16"))


def test_sharded_base_stays_sharded_and_bin_only_base_falls_back(
    base_and_delta, tmp_path, tiny_tokenizer, capsys
):
    model, _, delta, _ = base_and_delta
    sharded = _save(model, tiny_tokenizer, tmp_path / "sharded", max_shard_size="100KB")
    out = tmp_path / "ms"
    assert main(_argv(sharded, delta, out)) == 0
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in sharded.glob("*.safetensors"))
    assert (out / "model.safetensors.index.json").is_file()
    _assert_equal(_tensors(out), _reference(sharded, delta, tmp_path))

    # A .bin-only checkpoint (transformers 5 always writes safetensors, so it is made by hand).
    binonly = _save(model, tiny_tokenizer, tmp_path / "bin")
    torch.save(_tensors(binonly), binonly / "pytorch_model.bin")
    (binonly / "model.safetensors").unlink()
    # It takes the model-building path, whose loader refuses pickle weights (issue 16, round 1):
    # exit 2, the cause said, nothing written.
    out = tmp_path / "mb"
    assert main(_argv(binonly, delta, out)) == 2
    assert "no safetensors weights" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mb.")]


def test_killed_merge_leaves_no_half_written_out_and_a_rerun_succeeds(base_and_delta, tmp_path):
    _, base, delta, _ = base_and_delta
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "mm4ke_ray.cli", *_argv(base, delta, out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    kills = 0
    for wanted in ("", "model.safetensors", "config.json"):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            stages = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.")]
            if stages and (not wanted or any((s / wanted).exists() for s in stages)):
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        proc.wait()
        if out.exists():  # it finished before the kill: then it is complete
            assert (out / MERGE_INFO_FILE).is_file() and len(_tensors(out)) == len(_tensors(base))
            shutil.rmtree(out)
    assert kills >= 2 and not out.exists()
    assert main(_argv(base, delta, out)) == 0  # no --force needed
    assert (out / MERGE_INFO_FILE).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".killed.")]
