"""Issue 23: WILD-faithful generated scores and KnowEdit's aggregation.

A table of hand-written answers with the score each match and stop rule gives; a generated "."
ends a row and a batch stops when every row has (not after 64 tokens); "Dr." does not end an
answer; a record's portability/locality is the mean of its per-kind means in both families;
chat-format fluency stops at the end of the assistant's turn; the rules are config fields,
recorded with each run, and part of the sweep fingerprint."""

from __future__ import annotations

import pytest
import torch
from fault_helpers import sweep_dict
from hand_models import BASE_NEXT, EDITED_NEXT, HAND_RECORDS, hand_tokenizer_for, lookup_qwen2

from mm4ke_ray.config import validate_config
from mm4ke_ray.data import QA, EditRecord
from mm4ke_ray.evaluate import EditEvaluator, GenerationEvaluator, answer_matches, greedy_generate
from mm4ke_ray.evaluate.definitions import AGGREGATION, EDIT_DEFINITIONS
from mm4ke_ray.evaluate.fluency import generate_for_fluency
from mm4ke_ray.evaluate.stop_rules import TextStop, cut_answer, stop_index
from mm4ke_ray.fingerprint import differences, fingerprint, fingerprint_fields

# -- hand-written answers: (generated text, target, {(stop, match): score}) -----------------------
# "wild" cuts at a sentence-ending "." or a newline; "newline" (the old rule) only at a newline.
W, N = "wild", "newline"
ANSWERS = [
    # The first example: a hit only for the lenient starts_with.
    ("Paris, no wait, it is London.", "Paris",
     {(W, "equals"): 0, (W, "starts_with"): 100, (W, "contains"): 100,
      (N, "equals"): 0, (N, "starts_with"): 100, (N, "contains"): 100}),
    # "Dr." does not end the answer (EasyEdit's bare "." stop would cut at "Dr").
    ("Dr. John Smith. He was a surgeon.", "Dr. John Smith",
     {(W, "equals"): 100, (W, "starts_with"): 100, (W, "contains"): 100,
      (N, "equals"): 0, (N, "starts_with"): 100, (N, "contains"): 100}),
    ("Paris.", "Paris",
     {(W, "equals"): 100, (W, "starts_with"): 100, (W, "contains"): 100,
      (N, "equals"): 100, (N, "starts_with"): 100, (N, "contains"): 100}),
    ("Paris\nLondon", "Paris",
     {(W, "equals"): 100, (N, "equals"): 100, (W, "contains"): 100}),
    # The answer ends at the first sentence: a later "Paris" is not the answer under wild.
    ("London. Paris.", "Paris",
     {(W, "equals"): 0, (W, "starts_with"): 0, (W, "contains"): 0,
      (N, "equals"): 0, (N, "starts_with"): 0, (N, "contains"): 100}),
    ("It is Paris.", "Paris",
     {(W, "equals"): 0, (W, "starts_with"): 0, (W, "contains"): 100}),
    ("John F. Kennedy.", "John F. Kennedy", {(W, "equals"): 100}),
    ("the U.S. Army.", "U.S. Army", {(W, "equals"): 100}),
    ("3.5 million.", "3.5 million", {(W, "equals"): 100}),
    ("St. Petersburg, Russia.", "St. Petersburg", {(W, "equals"): 0, (W, "starts_with"): 100}),
    ("Martin Luther King Jr. He led the march.", "Martin Luther King Jr.", {(W, "equals"): 100}),
    ("\n\nRome.", "Rome", {(W, "equals"): 100, (N, "equals"): 100}),  # leading blank lines are no answer
    ("Paris", "London", {(W, "equals"): 0, (W, "starts_with"): 0, (W, "contains"): 0}),
    ("", "Paris", {(W, "equals"): 0, (N, "equals"): 0}),
]


@pytest.mark.parametrize(("text", "target", "expected"), ANSWERS, ids=[a[0][:24] for a in ANSWERS])
def test_hand_written_answers_under_each_rule(text, target, expected):
    for (stop, match), score in expected.items():
        got = 100 if answer_matches(cut_answer(text, stop), target, match) else 0
        assert got == score, (stop, match)


def test_a_dot_after_a_digit_waits_for_the_next_token():
    assert stop_index("born in 19.", final=False) is None  # maybe "19.5"
    assert stop_index("born in 19.", final=True) == len("born in 19")
    assert stop_index("Paris.", final=False) == 5
    assert stop_index("Dr.", final=False) is None


# -- generation stops at "." and the batch stops with its last row ----------------------------------


@pytest.fixture(scope="module")
def dot_tokenizer():
    records = [EditRecord(prompt="the sea is", target_new="rome"),
               EditRecord(prompt="grass looks", target_new="dr smith")]
    return hand_tokenizer_for(records, {"rome": ".", ".": "city", "city": "city", "dr": "smith"})


def test_a_sentence_end_stops_generation_and_the_batch_ends_with_its_last_row(dot_tokenizer):
    tok = dot_tokenizer
    # "is" -> "rome" -> "." ; "looks" -> "dr" -> "." -> "smith" -> "." ; after that "city" forever.
    model = lookup_qwen2(tok, {"is": "rome", "rome": ".", "looks": "dr", "dr": ".", ".": "smith",
                               "smith": ".", "city": "city"})
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    prompts = [tok(p)["input_ids"] for p in ("the sea is", "grass looks")]
    out = greedy_generate(model, prompts, [64, 64], set(), 0, text_stop=TextStop(tok))
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in out]
    assert texts == ["rome.", "dr. smith."]  # "dr." is an abbreviation: the answer goes on
    assert [cut_answer(t) for t in texts] == ["rome", "dr. smith"]
    assert len(calls) == 4  # the prompt and 3 more steps: not 64
    # Without the text stop the budget runs out.
    out = greedy_generate(model, prompts, [64, 64], set(), 0)
    assert [len(ids) for ids in out] == [64, 64]
    # The evaluator's default: wild stops, exact match.
    records = [EditRecord(prompt="the sea is", target_new="rome"),
               EditRecord(prompt="grass looks", target_new="dr smith")]
    metrics = GenerationEvaluator(tok, records).evaluate(model, None)
    assert metrics.edit_succ == 100.0
    assert [r["items"]["edit_succ"][0]["generated"] for r in metrics.per_record] == ["rome", "dr. smith"]
    assert {(r["match"], r["stop"]) for r in metrics.per_record} == {("equals", "wild")}
    old = GenerationEvaluator(tok, records, stop="newline", max_new_tokens=4).evaluate(model, None)
    # No newline: "rome. smith." runs on (a miss); "dr. smith." fills the 4-token budget (a hit).
    assert [r["items"]["edit_succ"][0]["generated"] for r in old.per_record] == ["rome. smith.", "dr. smith."]
    assert old.edit_succ == 50.0


# -- aggregation: per record the mean of its per-kind means, both families ---------------------------


def test_a_record_is_the_mean_of_its_per_kind_means_in_both_families():
    record = EditRecord(
        prompt="the capital of france is", target_new="rome",
        portability=(QA("the pope lives in", "rome town", "Reasoning"),
                     QA("italy has capital", "rome", "Reasoning"),
                     QA("france has capital", "paris", "Subject_Aliasing")),
        locality=(QA("grass looks", "green", "Relation_Specificity"),
                  QA("the sea is", "blue", "Relation_Specificity"),
                  QA("hamlet was written by", "william shakespeare", "Forgetfulness")),
    )
    tok = hand_tokenizer_for([record], BASE_NEXT, EDITED_NEXT)
    base, edited = lookup_qwen2(tok, BASE_NEXT), lookup_qwen2(tok, EDITED_NEXT)
    forced = EditEvaluator(tok, [record])
    tf = forced.evaluate(edited, forced.base_predictions(base))
    # Teacher-forced portability: Reasoning (50 + 100) / 2 = 75, Subject_Aliasing 0 -> 37.5
    # (pooled: 50). Locality: Relation_Specificity ("red" kept 100, "is" changed 0) 50, Forgetfulness
    # ("by" -> "smith" 0, "william" -> "jones" ... 0) 0 -> 25 (pooled: 33.3).
    assert tf.portability == pytest.approx(37.5) and tf.locality == pytest.approx(25.0)
    generated = GenerationEvaluator(tok, [record], match="starts_with")
    gen = generated.evaluate(edited, generated.base_generations(base))
    # Generated portability: Reasoning (0 + 100) / 2 = 50, Subject_Aliasing 0 -> 25 (pooled 33.3);
    # locality: Relation_Specificity 50 ("red" = "red", "rome city" != "blue"), Forgetfulness 0 -> 25.
    assert gen.portability == pytest.approx(25.0) and gen.locality == pytest.approx(25.0)
    assert gen.by_kind["portability.Reasoning"] == 50.0 and tf.by_kind["portability.Reasoning"] == 75.0


# -- chat fluency ends with the assistant's turn ----------------------------------------------------


def test_chat_fluency_stops_at_the_end_of_turn(dot_tokenizer):
    tok = dot_tokenizer
    eos = tok.eos_token
    model = lookup_qwen2(tok, {":": "rome", "is": "rome", "rome": "city", "city": eos, eos: "rome"})
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)  # top-k sampling picks the lookup's token with certainty
    chat = generate_for_fluency(model, tok, "the sea is", seed=0, prompt_format="chat")
    assert chat == "the sea is rome city"
    # Plain format keeps EasyEdit's rule: 100 tokens whatever comes (no stop at EOS).
    plain = generate_for_fluency(model, tok, "the sea is", seed=0)
    assert len(tok(plain)["input_ids"]) > 50


# -- config, records and the fingerprint -------------------------------------------------------------


def test_defaults_old_configs_and_the_fingerprint(tmp_path, tiny_model_dir):
    from mm4ke_ray.tracking.sweep_run import recorded_choices

    data = sweep_dict(tmp_path, tiny_model_dir, "a")
    data["evaluation"] = {**data.get("evaluation", {}), "mode": "both"}
    new = validate_config(data)
    ev = new.evaluation
    assert (ev.generation_match, ev.generation_stop, ev.generation_max_new_tokens, ev.generation_extra_tokens) == (
        "equals", "wild", 64, None)
    # A config written before issue 23 still validates, under its old bound and lenient match.
    old = validate_config({**data, "evaluation": {**data["evaluation"], "generation_match": "starts_with",
                                                  "generation_extra_tokens": 4}})
    recorded = recorded_choices(old)
    assert recorded["generation_match"] == "starts_with" and recorded["generation_extra_tokens"] == 4
    assert recorded["generation_stop"] == "wild" and "sentence-ending" in recorded["generation_stop_rule"]
    assert recorded["edit_aggregation"] == AGGREGATION and recorded["edit_definitions"] == EDIT_DEFINITIONS
    fields = fingerprint_fields(new)
    assert fields["evaluation.definitions"] == EDIT_DEFINITIONS
    assert fields["evaluation.generation_stop"] == "wild"
    named = [k for k, _, _ in differences(fields, fingerprint_fields(old))]
    assert named == ["evaluation.generation_extra_tokens", "evaluation.generation_match"]
    # A sweep logged before issue 23 lacks the definitions: compared, it is named, never silently equal.
    before = {k: v for k, v in fields.items() if k not in ("evaluation.definitions", "evaluation.generation_stop",
                                                           "evaluation.generation_max_new_tokens")}
    assert fingerprint(before) != fingerprint(fields)
    assert [k for k, _, _ in differences(fields, before)] == [
        "evaluation.definitions", "evaluation.generation_max_new_tokens", "evaluation.generation_stop"]
    with pytest.raises(Exception, match="generation_stop"):
        validate_config({**data, "evaluation": {**data["evaluation"], "generation_stop": "period"}})
    with pytest.raises(Exception, match="generation_max_new_tokens"):
        validate_config({**data, "evaluation": {**data["evaluation"], "generation_max_new_tokens": 0}})


def test_hand_records_keep_their_lenient_scores_under_starts_with():
    # The figures of test_generation's by-hand test, with the rules spelled out.
    tok = hand_tokenizer_for(HAND_RECORDS, BASE_NEXT, EDITED_NEXT)
    edited = lookup_qwen2(tok, EDITED_NEXT)
    lenient = GenerationEvaluator(tok, HAND_RECORDS, match="starts_with").evaluate(edited, None)
    strict = GenerationEvaluator(tok, HAND_RECORDS).evaluate(edited, None)
    assert (lenient.edit_succ, strict.edit_succ) == (50.0, 0.0)
