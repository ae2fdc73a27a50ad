"""Generation-based edit metrics: normalisation and matching by hand, hand-built lookup models
(a model that knows an answer's first token but not the rest), batched == one prompt at a time
(and == HF generate), locality of the base against itself, chat format, stops, per-kind means
and the `evaluate --mode` CLI."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch
from conftest import ZSRE
from hand_models import BASE_NEXT, EDITED_NEXT, HAND_RECORDS, hand_tokenizer_for, lookup_qwen2
from knowedit_kinds import COUNTERFACT, RECENT, kind_fixture_records, raw_kinds

from mm4ke_ray.data import QA, EditRecord, load_edit_records
from mm4ke_ray.demo.tiny import build_tiny_model, save_pretrained_pair
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate import (
    EditEvaluator,
    GenerationEvaluator,
    answer_matches,
    greedy_generate,
    normalize_answer,
    stop_token_ids,
)
from mm4ke_ray.evaluate.generation import answer_text
from mm4ke_ray.evaluate.stop_rules import TextStop, end_of_turn_ids
from mm4ke_ray.modeling import decoder_layers, encode_example, format_prompt

# -- normalisation and matching -------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("  The  Eiffel-Tower, Paris! ") == ["eiffeltower", "paris"]
    assert normalize_answer("An apple a day") == ["apple", "day"]
    assert normalize_answer("Ｒｏｍｅ") == ["rome"]  # NFKC: full-width letters
    assert normalize_answer("U.S. $5") == ["us", "5"]
    assert normalize_answer("") == []


@pytest.mark.parametrize(
    ("generated", "target", "match", "hit"),
    [
        ("Rome, the capital.", "rome", "starts_with", True),
        ("Rome, the capital.", "rome", "equals", False),
        ("the Rome", "Rome", "equals", True),  # articles dropped
        ("Romeo and Juliet", "rome", "starts_with", False),  # whole words, not characters
        ("It is in Rome city", "rome city", "contains", True),
        ("It is in Rome", "rome city", "contains", False),
        ("It is in Rome", "rome", "starts_with", False),
        ("", "rome", "starts_with", False),
        ("The", "the", "equals", True),  # a target that normalises to nothing: its own words
        ("a", "the", "equals", False),
    ],
)
def test_answer_matches(generated, target, match, hit):
    assert answer_matches(generated, target, match) is hit


def test_unknown_match_mode_is_refused(hand_tokenizer):
    with pytest.raises(ValueError, match="starts_with"):
        answer_matches("a", "b", "prefix")
    with pytest.raises(UserError, match="match must be one of"):
        GenerationEvaluator(hand_tokenizer, HAND_RECORDS, match="prefix")
    with pytest.raises(UserError, match="empty"):
        GenerationEvaluator(hand_tokenizer, [])


# -- hand-built lookup models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_tokenizer():
    return hand_tokenizer_for(HAND_RECORDS, BASE_NEXT, EDITED_NEXT)


@pytest.fixture(scope="module")
def hand_models(hand_tokenizer):
    return lookup_qwen2(hand_tokenizer, BASE_NEXT), lookup_qwen2(hand_tokenizer, EDITED_NEXT)


def test_first_token_known_rest_not(hand_tokenizer, hand_models):
    # The edited model continues "... lives in" with "rome city": it knows the first answer token
    # of "rome town" but not the second. Teacher forcing gives partial credit, generation none.
    _, edited = hand_models
    record = [EditRecord(prompt="the pope lives in", target_new="rome town")]
    forced = EditEvaluator(hand_tokenizer, record).evaluate(edited, None)
    generated = GenerationEvaluator(hand_tokenizer, record).evaluate(edited, None)
    assert forced.edit_succ == pytest.approx(50.0)
    assert generated.edit_succ == 0.0
    assert generated.per_record[0]["items"]["edit_succ"][0]["generated"] == "rome city"
    # The same model on a target it can say whole.
    known = [EditRecord(prompt="the pope lives in", target_new="rome city")]
    assert EditEvaluator(hand_tokenizer, known).evaluate(edited, None).edit_succ == 100.0
    assert GenerationEvaluator(hand_tokenizer, known).evaluate(edited, None).edit_succ == 100.0


def test_generation_metrics_by_hand(hand_tokenizer, hand_models):
    base, edited = hand_models
    evaluator = GenerationEvaluator(hand_tokenizer, HAND_RECORDS, batch_size=3, match="starts_with")
    metrics = evaluator.evaluate(edited, evaluator.base_generations(base))
    # Edit Succ: "... is" -> "rome city" starts with "rome" (hit); "spain has capital" ->
    # "rome city", not "madrid city" (miss): 50 (teacher-forced: 75).
    assert metrics.edit_succ == 50.0
    # Generalization: "france has capital" -> "rome city" (hit), "capital of france" -> "paris".
    assert metrics.generalization == 50.0
    # Portability: "the pope lives in" -> "rome city" vs "rome town" (miss), "italy has capital"
    # -> "rome city" vs "rome" (hit): 50 (teacher-forced: 75).
    assert metrics.portability == 50.0
    # Locality: record 0 "by" -> "smith" vs base "william shakespeare": 0; record 1 "looks" ->
    # "red" in both (100), "the sea is" -> "rome city" vs base "blue" (0): 50. Mean (0 + 50) / 2.
    assert metrics.locality == 25.0
    assert metrics.by_kind == {"portability.Reasoning": 50.0, "locality.Relation_Specificity": 25.0}
    assert metrics.as_dict() == {
        "edit_succ": 50.0,
        "generalization": 50.0,
        "portability": 50.0,
        "locality": 25.0,
    }
    second = metrics.per_record[1]
    assert [(i["generated"], i["base_generated"], i["score"]) for i in second["items"]["locality"]] == [
        ("red", "red", 100.0),
        ("rome city", "blue", 0.0),
    ]
    # "equals" asks for the whole answer: "rome city" is not "rome".
    strict = GenerationEvaluator(hand_tokenizer, HAND_RECORDS, match="equals")
    assert strict.evaluate(edited, None).edit_succ == 0.0


def test_locality_of_the_base_against_itself_is_100(hand_tokenizer, hand_models, tiny_tokenizer):
    base, _ = hand_models
    evaluator = GenerationEvaluator(hand_tokenizer, HAND_RECORDS)
    assert evaluator.evaluate(base, evaluator.base_generations(base)).locality == 100.0
    records = load_edit_records(ZSRE, limit=12).records
    model = build_tiny_model("qwen2", len(tiny_tokenizer), hidden=32, layers=2, seed=0)
    on_zsre = GenerationEvaluator(tiny_tokenizer, records, batch_size=5)
    metrics = on_zsre.evaluate(model, on_zsre.base_generations(model))
    assert metrics.locality == 100.0 and metrics.by_kind["locality.Relation_Specificity"] == 100.0


def test_reference_must_match(hand_tokenizer, hand_models):
    base, edited = hand_models
    evaluator = GenerationEvaluator(hand_tokenizer, HAND_RECORDS)
    assert evaluator.evaluate(edited, None).locality is None
    for other in (GenerationEvaluator(hand_tokenizer, HAND_RECORDS, extra_new_tokens=1),
                  GenerationEvaluator(hand_tokenizer, HAND_RECORDS, max_new_tokens=8),
                  GenerationEvaluator(hand_tokenizer, HAND_RECORDS, stop="newline")):
        with pytest.raises(ValueError, match="different GenerationEvaluator"):
            evaluator.evaluate(edited, other.base_generations(base))


def test_budget_is_max_new_tokens_and_the_old_bound_caps_it(hand_tokenizer, hand_models):
    # A lookup model that never stops ("city" -> "city"): WILD's budget (64 by default), or the
    # pre-WILD bound (the answer's 2 tokens + extra) when extra_new_tokens is set.
    looping = lookup_qwen2(hand_tokenizer, {**EDITED_NEXT, "city": "city"})
    record = [EditRecord(prompt="the pope lives in", target_new="rome town")]
    (item,) = GenerationEvaluator(hand_tokenizer, record).items
    assert item.max_new_tokens == 64
    (item,) = GenerationEvaluator(hand_tokenizer, record, max_new_tokens=9).items
    (ids,) = greedy_generate(looping, [item.prompt_ids], [item.max_new_tokens], set(), 0)
    assert item.max_new_tokens == 9 and len(ids) == 9
    for extra in (0, 3):
        evaluator = GenerationEvaluator(hand_tokenizer, record, extra_new_tokens=extra)
        (item,) = evaluator.items
        assert item.max_new_tokens == 2 + extra
        (ids,) = greedy_generate(looping, [item.prompt_ids], [item.max_new_tokens], set(), 0)
        assert len(ids) == 2 + extra
    assert GenerationEvaluator(hand_tokenizer, record, max_new_tokens=3, extra_new_tokens=5).items[0].max_new_tokens == 3
    with pytest.raises(UserError, match="max_new_tokens"):
        GenerationEvaluator(hand_tokenizer, record, max_new_tokens=0)
    with pytest.raises(UserError, match="stop must be one of"):
        GenerationEvaluator(hand_tokenizer, record, stop="period")


# -- stops: end of sequence, end of turn, newline -------------------------------------------------


def test_chat_format_uses_the_training_prompt_and_stops_at_end_of_turn(hand_tokenizer):
    # The tiny chat template: "user : <prompt> <eos> assistant : " then the reply; the model
    # answers "rome" after the generation prompt's last token ":" and would go on with "city"
    # after its end-of-turn token "<eos>" if generation did not stop there.
    eos = hand_tokenizer.eos_token
    chatty = lookup_qwen2(hand_tokenizer, {":": "rome", "rome": eos, eos: "city"})
    assert end_of_turn_ids(hand_tokenizer) == {hand_tokenizer.eos_token_id}
    assert hand_tokenizer.eos_token_id in stop_token_ids(hand_tokenizer, chatty)
    record = [EditRecord(prompt="spain has capital", target_new="rome")]
    evaluator = GenerationEvaluator(hand_tokenizer, record, prompt_format="chat", match="equals")
    (item,) = evaluator.items
    ex = encode_example(hand_tokenizer, "spain has capital", "rome", "chat")
    assert item.prompt_ids == tuple(ex.input_ids[: ex.answer_start])
    head = format_prompt(hand_tokenizer, "spain has capital", "chat")
    assert hand_tokenizer.decode(list(item.prompt_ids)) == head.strip()
    ids = greedy_generate(chatty, [item.prompt_ids], [item.max_new_tokens],
                          stop_token_ids(hand_tokenizer, chatty), 0)
    assert ids == [[hand_tokenizer.convert_tokens_to_ids("rome")]]  # the stop token is not kept
    metrics = evaluator.evaluate(chatty, evaluator.base_generations(chatty))
    assert metrics.edit_succ == 100.0
    # Plain format: the prompt ends in "capital" (no rule): nothing is generated but padding.
    plain = GenerationEvaluator(hand_tokenizer, record, match="equals")
    assert plain.evaluate(chatty, None).edit_succ == 0.0


def test_newline_stops_once_text_was_generated():
    from tokenizers import AddedToken

    records = [EditRecord(prompt="the sea is", target_new="blue")]
    tok = hand_tokenizer_for(records, {"rome": "city"})
    tok.add_tokens([AddedToken("\n", normalized=False)])
    nl = tok.convert_tokens_to_ids("\n")
    ids = tok.convert_tokens_to_ids
    prompt = tok("the sea is")["input_ids"]
    # "rome" then a newline: stop after the newline token, the answer is "rome".
    model = lookup_qwen2(tok, {"is": "rome", "rome": "\n", "\n": "city"})
    (got,) = greedy_generate(model, [prompt], [8], set(), 0, text_stop=TextStop(tok))
    assert got == [ids("rome"), nl] and answer_text(tok, got) == "rome"
    # A leading newline is not an answer: generation goes on to "rome city".
    model = lookup_qwen2(tok, {"is": "\n", "\n": "rome", "rome": "city"})
    (got,) = greedy_generate(model, [prompt], [3], set(), 0, text_stop=TextStop(tok))
    assert got == [nl, ids("rome"), ids("city")] and answer_text(tok, got) == "rome city"


# -- batched == one prompt at a time ---------------------------------------------------------------


def hf_generate_one(model, prompt_ids, max_new_tokens, stops, pad_id) -> list[int]:
    """One unpadded prompt through Hugging Face `generate` (greedy), cut before the first stop."""
    ids = torch.tensor([list(prompt_ids)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stops),
        pad_token_id=pad_id,
    )[0, ids.shape[1] :].tolist()
    return next((out[:k] for k, t in enumerate(out) if t in stops), out)


class _EndsAt(TextStop):
    """A text stop that ends a row at one given token (the batching check needs one that fires)."""

    def __init__(self, tokenizer, token: int):
        super().__init__(tokenizer)
        self.token = token

    def ended(self, ids) -> bool:
        return ids[-1] == self.token


def _perturbed(model, seed: int, scale: float = 0.05):
    edited = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in decoder_layers(edited)[-1].mlp.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return edited


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_batched_equals_one_at_a_time(arch, tiny_tokenizer):
    records = load_edit_records(ZSRE, limit=15).records
    model = build_tiny_model(arch, len(tiny_tokenizer), hidden=32, layers=2, seed=4)
    evaluator = GenerationEvaluator(tiny_tokenizer, records, batch_size=7, max_new_tokens=12)
    items = evaluator.items
    prompts = [it.prompt_ids for it in items]
    bounds = [it.max_new_tokens for it in items]
    stops = stop_token_ids(tiny_tokenizer, model)
    single = [greedy_generate(model, [p], [b], stops, 0)[0] for p, b in zip(prompts, bounds, strict=True)]
    assert len({len(p) for p in prompts}) > 3  # prompts of many lengths: real left padding
    for batch_size in (4, 64):
        assert greedy_generate(model, prompts, bounds, stops, 0, batch_size=batch_size) == single
    hf = [hf_generate_one(model, p, b, stops, 0) for p, b in zip(prompts, bounds, strict=True)]
    assert single == hf
    # A text stop ends rows mid-batch (the WILD "." / newline; here a frequent token so that it
    # fires in an untrained model): batched == one at a time == HF's, cut after the stop.
    common = Counter(t for ids in hf for t in ids[1:]).most_common(1)[0][0]
    text_stop = _EndsAt(tiny_tokenizer, common)
    cut = [next((ids[:k] for k in range(1, len(ids) + 1) if text_stop.ended(ids[:k])), ids) for ids in hf]
    assert sum(len(c) < len(h) for c, h in zip(cut, hf, strict=True)) > 2
    for batch_size in (1, 5):
        assert greedy_generate(model, prompts, bounds, stops, 0, batch_size, text_stop) == cut
    # Metrics do not depend on the batch size either.
    one = GenerationEvaluator(tiny_tokenizer, records, batch_size=1, max_new_tokens=12)
    edited = _perturbed(model, seed=5)
    a = evaluator.evaluate(edited, evaluator.base_generations(model))
    b = one.evaluate(edited, one.base_generations(model))
    assert a.per_record == b.per_record and a.flat() == b.flat()


def test_stop_token_ends_a_row_not_the_batch(hand_tokenizer):
    eos = hand_tokenizer.eos_token
    model = lookup_qwen2(hand_tokenizer, {"is": "rome", "rome": eos, "capital": "rome",
                                          "in": "madrid", "madrid": "city", "city": "city"})
    prompts = [hand_tokenizer(p)["input_ids"] for p in ("the sea is", "the pope lives in")]
    stops = {hand_tokenizer.eos_token_id}
    got = greedy_generate(model, prompts, [5, 5], stops, 0)
    ids = hand_tokenizer.convert_tokens_to_ids
    assert got == [[ids("rome")], [ids("madrid")] + [ids("city")] * 4]


# -- per-kind means on real KnowEdit WikiData records -------------------------------------------


@pytest.mark.parametrize("path", [RECENT, COUNTERFACT], ids=["recent", "counterfact"])
def test_per_kind_means_in_generation_mode(path):
    raw, records = kind_fixture_records(path, 30)
    tokenizer = hand_tokenizer_for(records)
    base = build_tiny_model("qwen2", len(tokenizer), hidden=32, layers=2, seed=0)
    # An untrained model rarely stops: a short budget keeps the test quick (the means are the point).
    evaluator = GenerationEvaluator(tokenizer, records, batch_size=16, max_new_tokens=12)
    metrics = evaluator.evaluate(_perturbed(base, seed=2, scale=0.5), evaluator.base_generations(base))
    for group in ("portability", "locality"):
        want = raw_kinds(raw, group)
        got = {k.split(".", 1)[1]: v for k, v in metrics.by_kind.items() if k.startswith(group + ".")}
        assert set(got) == set(want)
        for kind, value in got.items():
            per_record = [
                sum(s) / len(s)
                for row in metrics.per_record
                if (s := [i["score"] for i in row["items"][group] if i["kind"] == kind])
            ]
            assert len(per_record) == want[kind] and value == pytest.approx(sum(per_record) / len(per_record))
    assert "locality.Forgetfulness" in metrics.by_kind
    # A record's score is the mean of its per-kind means (KnowEdit), not of its pooled items.
    for row in metrics.per_record:
        for group in ("portability", "locality"):
            kinds = {i["kind"] for i in row["items"][group]}
            means = [sum(s) / len(s) for k in kinds
                     if (s := [i["score"] for i in row["items"][group] if i["kind"] == k])]
            assert row[group] == (pytest.approx(sum(means) / len(means)) if means else None)


# -- CLI --------------------------------------------------------------------------------------------


def test_evaluate_cli_modes(tmp_path, tiny_tokenizer, tiny_model_dir, capsys):
    from mm4ke_ray.cli import main
    from mm4ke_ray.modeling import load_model, load_tokenizer

    edited_dir = save_pretrained_pair(
        _perturbed(load_model(str(tiny_model_dir)), seed=2), tiny_tokenizer, tmp_path / "edited"
    )
    out = tmp_path / "metrics.json"
    common = ["evaluate", "--model", str(edited_dir), "--base", str(tiny_model_dir),
              "--data", str(ZSRE), "--limit", "5", "--batch-size", "3", "--out", str(out)]
    assert main([*common, "--mode", "both"]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "both"
    aggregates = {"edit_succ", "generalization", "portability", "locality"}
    assert aggregates <= set(report["generation_metrics"]) and "fluency" not in report["generation_metrics"]
    assert set(report["generation_metrics"]) - aggregates == set(report["metrics"]) - aggregates - {"fluency"}
    assert report["generation"]["match"] == "equals" and report["generation"]["stop"] == "wild"
    assert report["generation"]["max_new_tokens"] == 64 and report["generation"]["extra_new_tokens"] is None
    assert report["aggregation"].startswith("record: mean of its per-kind means")
    row = report["per_record"][0]
    assert "items" in row and row["generation"]["items"]["edit_succ"][0]["target"] == row["target_new"]
    assert "generated" in row["generation"]["items"]["locality"][0]

    tokenizer = load_tokenizer(str(edited_dir))
    records = load_edit_records(ZSRE, limit=5).records
    expected = GenerationEvaluator(tokenizer, records)
    want = expected.evaluate(load_model(str(edited_dir)), expected.base_generations(load_model(str(tiny_model_dir))))
    assert report["generation_metrics"] == pytest.approx(want.flat())
    assert "generated (WILD, equals, stop wild):" in capsys.readouterr().out

    assert main([*common, "--mode", "generation", "--match", "starts_with", "--stop", "newline",
                 "--max-new-tokens", "8", "--extra-new-tokens", "4", "--force"]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"] is None and report["generation"]["match"] == "starts_with"
    assert (report["generation"]["stop"], report["generation"]["max_new_tokens"]) == ("newline", 8)
    assert report["generation"]["extra_new_tokens"] == 4
    assert report["per_record"][0]["generation"]["match"] == "starts_with"
    assert report["per_record"][0]["generation"]["stop"] == "newline"
    assert main([*common, "--mode", "generation", "--fluency"]) == 2
    assert "--mode both" in capsys.readouterr().err
    assert main([*common, "--extra-new-tokens", "-1", "--mode", "generation"]) == 2
    assert main([*common, "--max-new-tokens", "0", "--mode", "generation"]) == 2


def test_items_without_a_kind_are_left_out_of_per_kind_means(hand_tokenizer, hand_models):
    _, edited = hand_models
    record = [EditRecord(prompt="the sea is", target_new="rome",
                         portability=(QA("italy has capital", "rome"),))]
    metrics = GenerationEvaluator(hand_tokenizer, record, match="starts_with").evaluate(edited, None)
    assert metrics.portability == 100.0 and metrics.by_kind == {}
