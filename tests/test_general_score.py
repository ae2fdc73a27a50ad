"""The bounded general score and the noise guard, on the paper's own Table 1 figures.

Figures (percent; ratios do not depend on the scale), Qwen2.5-7B-Instruct on ZsRE, base ->
R-SFT -> merged:
- C-Eval 79.57 -> 78.97 -> 79.35 and LogiQA 37.94 -> 24.42 -> 33.03: /work/shared/DESIGN.md.
- DROP EM 0.23 -> 0.67 -> 1.9: issue 11.
- CoQA EM and SQuAD EM are in none of our files. Issue 11 gives the uncapped means they produce
  with the three above (R-SFT 1.256, merged 2.60), which fixes the SUM of their two retention
  ratios (R-SFT 1.731, merged 2.871) but not the split. The main case splits each sum evenly;
  `test_table1_properties_hold_for_every_split` checks the issue's three properties for every
  split in which each of the two ratios lies in [0.5, 2] (halving or doubling; C-Eval moved by
  under 1%, LogiQA by 36%).
"""

from __future__ import annotations

import math

import pytest

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.scores import (
    check_task_noise,
    general_score,
    noise_floor_stderr,
    retention,
)

BASE = {"ceval": 79.57, "logiqa": 37.94, "drop_em": 0.23}
RSFT = {"ceval": 78.97, "logiqa": 24.42, "drop_em": 0.67}
MERGED = {"ceval": 79.35, "logiqa": 33.03, "drop_em": 1.9}
UNCAPPED = {"rsft": 1.256, "merged": 2.60}  # issue 11's figures for the old mean of ratios


def _pair_sum(candidate: dict, target_mean: float) -> float:
    """What CoQA + SQuAD retention must add up to for the 5-task uncapped mean to be the issue's."""
    return 5 * target_mean - sum(retention(candidate, BASE).values())


def _table(coqa_squad_rsft: tuple[float, float], coqa_squad_merged: tuple[float, float]):
    """Base, R-SFT, merged scores for all five tasks; CoQA/SQuAD base set to 50 (only ratios matter)."""
    base = {**BASE, "coqa_em": 50.0, "squad_em": 50.0}
    rsft = {**RSFT, "coqa_em": 50.0 * coqa_squad_rsft[0], "squad_em": 50.0 * coqa_squad_rsft[1]}
    merged = {**MERGED, "coqa_em": 50.0 * coqa_squad_merged[0], "squad_em": 50.0 * coqa_squad_merged[1]}
    return base, rsft, merged


def _even_table():
    r, m = _pair_sum(RSFT, UNCAPPED["rsft"]), _pair_sum(MERGED, UNCAPPED["merged"])
    return _table((r / 2, r / 2), (m / 2, m / 2))


def test_table1_uncapped_mean_reproduces_the_issue():
    """The reconstructed table gives the issue's figures under the old mean (no cap)."""
    base, rsft, merged = _even_table()
    for cand, want in ((rsft, UNCAPPED["rsft"]), (merged, UNCAPPED["merged"])):
        kept = retention(cand, base).values()
        assert sum(kept) / len(kept) == pytest.approx(want, abs=1e-9)


def test_table1_bounded_score():
    base, rsft, merged = _even_table()
    s_rsft, s_merged = general_score(rsft, base), general_score(merged, base)
    print(f"Table 1, bounded: R-SFT {s_rsft:.4f}, merged {s_merged:.4f}")
    assert s_rsft < 0.95  # LogiQA fell 36%: R-SFT must not read as "better than the base"
    assert s_merged > s_rsft  # merging recovered C-Eval and LogiQA
    assert s_rsft <= 1.05 and s_merged <= 1.05
    # DROP's 8x "gain" counts as nothing lost, no more: without DROP the merged score is no lower.
    no_drop = {k: v for k, v in base.items() if k != "drop_em"}
    assert general_score({k: merged[k] for k in no_drop}, no_drop) <= 1.0


def test_table1_properties_hold_for_every_split():
    r_sum, m_sum = _pair_sum(RSFT, UNCAPPED["rsft"]), _pair_sum(MERGED, UNCAPPED["merged"])
    checked = 0
    for i in range(101):
        for j in range(101):
            r = (0.5 + 1.5 * i / 100, r_sum - (0.5 + 1.5 * i / 100))
            m = (0.5 + 1.5 * j / 100, m_sum - (0.5 + 1.5 * j / 100))
            if not all(0.5 <= x <= 2.0 for x in (*r, *m)):
                continue
            base, rsft, merged = _table(r, m)
            s_rsft, s_merged = general_score(rsft, base), general_score(merged, base)
            assert s_rsft < 0.95 and s_merged > s_rsft and max(s_rsft, s_merged) <= 1.05, (r, m)
            checked += 1
    assert checked > 1000


def test_one_task_cannot_carry_the_score():
    base = {"a": 0.5, "b": 0.01}
    assert general_score({"a": 0.25, "b": 0.03}, base) == pytest.approx((0.5 + 1.0) / 2)
    assert general_score({"a": 0.6}, {"a": 0.5}) == 1.0  # better than base: capped at 1
    assert general_score({"a": 0.5, "b": 0.0}, base) == pytest.approx(0.5)  # a loss still counts
    hib = {"ppl": False}  # lower-is-better: base / candidate, capped the same way
    assert general_score({"ppl": 5.0}, {"ppl": 10.0}, hib) == 1.0
    assert general_score({"ppl": 20.0}, {"ppl": 10.0}, hib) == 0.5
    assert math.isnan(general_score({"c": 0.3}, {"c": 0.0}))


def test_noise_guard_refuses_drop_em_at_limit_200():
    """The paper's base scores at general_limit 200, on lm-eval's 0..1 scale of these metrics (no
    stderr given: the Bernoulli bound stands in): DROP EM 0.23% is noise; the others are not."""
    scores = {"ceval-valid": 0.7957, "logiqa": 0.3794, "drop": 0.0023}
    chance = {"ceval-valid": 0.25, "logiqa": 0.25, "drop": 0.0}
    n = {"ceval-valid": 1346, "logiqa": 200, "drop": 200}
    with pytest.raises(UserError) as err:
        check_task_noise(scores, {}, chance, n, metrics={"drop": "em"})
    msg = str(err.value)
    assert "'drop' (em)" in msg and "of zero" in msg
    assert "ceval-valid" not in msg and "logiqa" not in msg
    assert "general_metrics" in msg and "drop the task" in msg  # the fix is said
    check_task_noise({k: v for k, v in scores.items() if k != "drop"}, {}, chance, n)


def test_noise_guard_uses_reported_stderr_and_chance():
    # 0.30 on a 4-choice task with stderr 0.03: 1.67 stderr above chance -> refused at z=2.
    with pytest.raises(UserError, match=r"'mc'.*chance \(0.25\)"):
        check_task_noise({"mc": 0.30}, {"mc": 0.03}, {"mc": 0.25}, {"mc": 200})
    check_task_noise({"mc": 0.30}, {"mc": 0.01}, {"mc": 0.25}, {"mc": 2000})
    check_task_noise({"mc": 0.30}, {"mc": 0.03}, {"mc": 0.25}, {"mc": 200}, z=1.5)
    # More documents shrink the (bounded) stderr: 1% EM is noise on 50 docs, not on 20,000.
    with pytest.raises(UserError, match="'gen'"):
        check_task_noise({"gen": 0.01}, {"gen": None}, {}, {"gen": 50})
    check_task_noise({"gen": 0.01}, {"gen": None}, {}, {"gen": 20000})
    check_task_noise({"ppl": 3.0}, {}, {}, {"ppl": 10}, higher_is_better={"ppl": False})
    with pytest.raises(UserError, match="'zero'"):  # a base of exactly 0 is always refused
        check_task_noise({"zero": 0.0}, {"zero": 0.0}, {}, {"zero": 1000})


def test_noise_floor_stderr_bounds_a_bernoulli_mean():
    assert noise_floor_stderr(0.5, 100) == pytest.approx(0.05)
    assert noise_floor_stderr(50.0, 100) == pytest.approx(5.0)  # percent scale
    assert noise_floor_stderr(0.0, 100) == 0.0
