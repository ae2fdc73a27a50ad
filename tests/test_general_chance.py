"""Chance-aware retention, the noise guard on SmolLM2's measured base scores, SE bounds on the
metric's own scale, the general score's SE and the precision warnings (issue 22 §2, 23 §3)."""

from __future__ import annotations

import math
import random

import pytest

from mm4ke_ray.config import validate_config
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.fidelity import general_score_stderr
from mm4ke_ray.evaluate.precision import (
    limit_for,
    precision_report,
    precision_warnings,
    retention_stderrs,
    save_base_measurement,
)
from mm4ke_ray.evaluate.scores import (
    RETENTION_DEFINITION,
    check_task_noise,
    general_score,
    noise_floor_stderr,
    retention,
)
from mm4ke_ray.evaluate.task_stats import log_ratio_stderr, paired_log_items, perplexity_stderr
from mm4ke_ray.fingerprint import differences, fingerprint, fingerprint_fields


def bernoulli_se(p: float, n: int) -> float:
    """lm-eval's mean_stderr of n 0/1 values with mean p (sample std, n-1)."""
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


# SmolLM2-135M-Instruct's base scores, lm-eval-style log-likelihood prompts, 100 documents each
# (issue 22 §2 / shared/data/general/SOURCES.md), and WikiText-2's word perplexity (lower is better).
SMOL = {"logiqa": 0.23, "boolq": 0.32, "rte": 0.51, "sst2": 0.62, "wikitext": 24.94}
SMOL_CHANCE = {"logiqa": 0.25, "boolq": 0.5, "rte": 0.5, "sst2": 0.5, "wikitext": None}
SMOL_SE = {t: bernoulli_se(p, 100) for t, p in SMOL.items() if t != "wikitext"} | {"wikitext": 0.4}
SMOL_N = {t: 100 for t in SMOL} | {"wikitext": 5}
SMOL_HIB = {"wikitext": False}


def test_a_candidate_at_chance_keeps_nothing_of_the_task():
    base, floor = {"mc": 0.60}, {"mc": 0.25}
    assert retention({"mc": 0.25}, base, floor=floor)["mc"] == 0.0
    assert retention({"mc": 0.25}, base)["mc"] == pytest.approx(0.25 / 0.60)  # the raw ratio it replaces
    assert retention({"mc": 0.425}, base, floor=floor)["mc"] == pytest.approx(0.5)  # half the ability above chance
    # Below chance: logged as it is (negative), clamped to 0 in the score, not subtracted from other tasks.
    assert retention({"mc": 0.20}, base, floor=floor)["mc"] == pytest.approx(-0.05 / 0.35)
    assert general_score({"mc": 0.20, "g": 0.5}, {"mc": 0.6, "g": 0.5}, floor=floor) == pytest.approx(0.5)
    assert general_score({"mc": 0.70}, base, floor=floor) == 1.0  # above the base: capped


def test_the_paper_memit_example_above_chance():
    """A method at chance on two of four tasks and at zero on the others keeps nothing of them,
    though its raw ratios (chance / base) look like a third of the ability kept."""
    base = {"ceval": 0.7957, "logiqa": 0.3794, "coqa": 0.60, "drop": 0.30}
    memit = {"ceval": 0.25, "logiqa": 0.25, "coqa": 0.0, "drop": 0.0}
    floor = {"ceval": 0.25, "logiqa": 0.25, "coqa": 0.0, "drop": 0.0}
    raw = general_score(memit, base)
    assert raw == pytest.approx((0.25 / 0.7957 + 0.25 / 0.3794) / 4)
    assert raw > 0.2
    assert general_score(memit, base, floor=floor) == 0.0


def test_perplexity_retention_is_base_over_candidate_capped():
    base, hib = {"wikitext": 24.94}, {"wikitext": False}
    assert retention({"wikitext": 25.06}, base, hib, {"wikitext": None})["wikitext"] == pytest.approx(24.94 / 25.06)
    assert general_score({"wikitext": 20.0}, base, hib) == 1.0  # lower perplexity than the base: capped
    mixed = general_score({"wikitext": 49.88, "sst2": 0.56}, {"wikitext": 24.94, "sst2": 0.62}, hib,
                          {"sst2": 0.5, "wikitext": None})
    assert mixed == pytest.approx((0.5 + 0.5) / 2)


def test_undefined_retention_when_the_base_is_at_its_floor():
    r = retention({"mc": 0.3, "same": 0.25}, {"mc": 0.25, "same": 0.25}, floor={"mc": 0.25, "same": 0.25})
    assert math.isnan(r["mc"]) and r["same"] == 1.0


def test_noise_guard_refuses_the_tasks_smollm2_is_at_chance_on():
    """Measured SmolLM2 base scores at 100 documents: LogiQA, BoolQ and RTE are at (or below)
    chance and refused by name; SST-2 (0.62 ± 0.049) and WikiText-2 perplexity pass."""
    with pytest.raises(UserError) as err:
        check_task_noise(SMOL, SMOL_SE, SMOL_CHANCE, SMOL_N, SMOL_HIB)
    msg = str(err.value)
    for task in ("logiqa", "boolq", "rte"):
        assert f"'{task}' (its metric): base score" in msg
    assert "'sst2'" not in msg and "'wikitext'" not in msg
    keep = ("sst2", "wikitext")
    check_task_noise({t: SMOL[t] for t in keep}, SMOL_SE, SMOL_CHANCE, SMOL_N, SMOL_HIB)
    # SST-2 clears chance by 2.5 SE: a stricter guard (z = 3) refuses it too.
    with pytest.raises(UserError, match="'sst2'"):
        check_task_noise({"sst2": 0.62}, SMOL_SE, SMOL_CHANCE, SMOL_N, z=3.0)


def test_se_bound_uses_the_metric_scale():
    """SQuAD 2.0's F1 of 0.8 on its 0-100 scale over 200 documents is noise (bound 0.63), though
    read as 0-1 it would pass (bound 0.028)."""
    assert noise_floor_stderr(0.8, 200) == pytest.approx(math.sqrt(0.8 * 0.2 / 200))
    assert noise_floor_stderr(0.8, 200, scale=100.0) == pytest.approx(math.sqrt(0.8 * 99.2 / 200))
    check_task_noise({"squadv2": 0.8}, {}, {}, {"squadv2": 200})  # 0-1 reading: accepted (the old bug)
    with pytest.raises(UserError, match="'squadv2'"):
        check_task_noise({"squadv2": 0.8}, {}, {}, {"squadv2": 200}, scale={"squadv2": 100.0})
    check_task_noise({"squadv2": 30.0}, {}, {}, {"squadv2": 200}, scale={"squadv2": 100.0})


def test_general_score_stderr_above_chance_and_for_perplexity():
    se = general_score_stderr({"mc": 0.05}, {"mc": 0.75}, {"mc": 100}, {}, floor={"mc": 0.25})
    assert se == pytest.approx(0.05 / 0.5)  # the span above chance, not the base, divides
    ppl = general_score_stderr({"w": 0.5}, {"w": 20.0}, {"w": 5}, {}, {"w": False}, candidate={"w": 25.0})
    assert ppl == pytest.approx(20.0 / 25.0 * 0.5 / 25.0)
    both = general_score_stderr({"mc": 0.05, "w": 0.5}, {"mc": 0.75, "w": 20.0}, {"mc": 100, "w": 5}, {},
                                {"w": False}, {"mc": 0.25}, {"mc": 0.7, "w": 25.0})
    assert both == pytest.approx(math.hypot(0.1, 0.016) / 2)
    assert general_score_stderr({"mc": 0.05}, {"mc": 0.25}, {"mc": 100}, {}, floor={"mc": 0.25}) is None
    # the rung's finite-population correction still applies: the full set has no error
    assert general_score_stderr({"mc": 0.05}, {"mc": 0.75}, {"mc": 100}, {"mc": 100}, floor={"mc": 0.25}) == 0.0


def test_perplexity_stderr_matches_the_jackknife():
    rng = random.Random(3)
    words = [rng.randint(200, 3000) for _ in range(40)]
    nll = [w * rng.uniform(2.8, 3.6) for w in words]
    ppl = math.exp(sum(nll) / sum(words))
    n = len(words)
    loo = [math.exp((sum(nll) - x) / (sum(words) - w)) for x, w in zip(nll, words, strict=True)]
    mean = sum(loo) / n
    jack = math.sqrt((n - 1) / n * sum((v - mean) ** 2 for v in loo))
    assert perplexity_stderr(nll, words) == pytest.approx(jack, rel=0.05)
    assert perplexity_stderr(nll, words) == pytest.approx(ppl * log_ratio_stderr(nll, words))
    assert perplexity_stderr(nll[:1], words[:1]) is None


def test_paired_log_items_difference_is_the_log_retention_difference():
    words = [1000, 2000, 1500]
    base = [3000.0, 6400.0, 4700.0]
    a = [x * 1.001 for x in base]  # NLL up 0.1% and 0.3%: perplexity up ~0.3% and ~1%
    b = [x * 1.003 for x in base]
    ia, ib = paired_log_items(a, words), paired_log_items(b, words)
    diff = sum(x - y for x, y in zip(ib, ia, strict=True)) / len(ia)
    ret = [math.exp(sum(base) / sum(words)) / math.exp(sum(c) / sum(words)) for c in (a, b)]
    assert diff == pytest.approx(math.log(ret[1]) - math.log(ret[0]), rel=1e-12)
    assert diff == pytest.approx(ret[1] - ret[0], rel=0.02)  # ≈ the retention difference near 1


def test_precision_warns_with_the_limit_that_meets_the_threshold():
    result = {"scores": SMOL, "stderr": SMOL_SE, "chance": SMOL_CHANCE, "n_docs": SMOL_N,
              "higher_is_better": SMOL_HIB}
    ses = retention_stderrs(result)
    assert ses["sst2"] == pytest.approx(SMOL_SE["sst2"] / 0.12)
    assert ses["wikitext"] == pytest.approx(0.4 / 24.94) and ses["logiqa"] is None  # below its floor
    lines = precision_warnings({**result, "scores": {t: SMOL[t] for t in ("sst2", "wikitext")}})
    need = limit_for(ses["sst2"], 100, 0.05)
    assert len(lines) == 1 and "'sst2'" in lines[0] and f"{need:,} documents" in lines[0]
    assert need == math.ceil(100 * (ses["sst2"] / 0.05) ** 2)
    # at that many documents the SE meets the threshold
    assert ses["sst2"] * math.sqrt(100 / need) <= 0.05
    assert precision_warnings({**result, "scores": {"wikitext": 24.94}}) == []
    assert precision_warnings({**result, "scores": {"sst2": 0.62}}, threshold=0.5) == []


def test_plan_and_validate_read_the_stored_base_measurement(tmp_path, monkeypatch):
    from mm4ke_ray.evaluate.general import GeneralResult

    monkeypatch.setenv("MM4KE_CACHE", str(tmp_path))
    config = validate_config({"model": {"name": str(tmp_path / "model")},
                              "evaluation": {"general_tasks": ["sst2"], "general_limit": 100}})
    assert "no base measurement" in precision_report(config)[0]
    result = GeneralResult({"sst2": 0.62}, {"sst2": SMOL_SE["sst2"]}, {"sst2": 0.5}, {"sst2": 100}, {"sst2": "acc"},
                           {"sst2": True})
    save_base_measurement(config, result)
    assert "'sst2': retention SE" in precision_report(config)[0]
    assert precision_report(config.with_overrides(**{"evaluation.general_se_threshold": 0.5})) == []
    other = config.with_overrides(**{"evaluation.general_limit": 200})  # another limit: not this measurement
    assert "no base measurement" in precision_report(other)[0]


def test_fingerprint_records_the_retention_definition():
    plain = validate_config({})
    tasks = validate_config({"evaluation": {"general_tasks": ["sst2"]}})
    assert "objectives.general_retention" not in fingerprint_fields(plain)
    fields = fingerprint_fields(tasks)
    assert fields["objectives.general_retention"] == RETENTION_DEFINITION
    older = {k: v for k, v in fields.items() if k != "objectives.general_retention"}  # a sweep scored raw
    assert differences(fields, older) == [("objectives.general_retention", RETENTION_DEFINITION, None)]
    assert fingerprint(fields) != fingerprint(older)
    # the warning threshold is no scoring choice; the local task files are
    assert fingerprint_fields(tasks.with_overrides(**{"evaluation.general_se_threshold": 0.2})) == fields
    local = tasks.with_overrides(**{"evaluation.local_tasks": {"sst2": "/d/sst2.tsv"}})
    assert differences(fingerprint_fields(local), fields)[0][0] == "evaluation.local_tasks"


def test_the_base_summary_names_score_se_floor_and_documents():
    from mm4ke_ray.evaluate.general import GeneralResult

    result = GeneralResult({"sst2": 0.62, "wikitext": 24.94}, {"sst2": 0.0488, "wikitext": 0.41},
                           {"sst2": 0.5, "wikitext": None}, {"sst2": 100, "wikitext": 5},
                           {"sst2": "acc", "wikitext": "word_perplexity"}, {"sst2": True, "wikitext": False})
    assert result.summary() == ["sst2 (acc): 0.62 ± 0.049, chance floor 0.5, 100 documents",
                                "wikitext (word_perplexity): 24.94 ± 0.41, no floor (lower is better), 5 documents"]
