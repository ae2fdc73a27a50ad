"""Edit metrics: hand-computed cases on a model whose argmax is set by hand, batched == one at a
time on real ZsRE records, n-gram entropy by hand, seeded fluency, and the `evaluate` CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

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
    generate_for_fluency,
    ngram_entropy,
    predict_answer_tokens,
    token_accuracy,
    word_tokens,
)
from mm4ke_ray.modeling import decoder_layers, encode_example

# -- a Qwen2 whose next-token argmax is a lookup table (tests/hand_models.py) -------------------


@pytest.fixture(scope="module")
def hand_tokenizer():
    return hand_tokenizer_for(HAND_RECORDS, BASE_NEXT, EDITED_NEXT)


@pytest.fixture(scope="module")
def hand_models(hand_tokenizer):
    return lookup_qwen2(hand_tokenizer, BASE_NEXT), lookup_qwen2(hand_tokenizer, EDITED_NEXT)


def test_token_accuracy_by_hand(hand_tokenizer, hand_models):
    _, edited = hand_models
    # "in" -> "rome" (right), "rome" -> "city" but the answer says "town": 1 of 2.
    assert token_accuracy(edited, hand_tokenizer, "the pope lives in", "rome town") == 0.5
    assert token_accuracy(edited, hand_tokenizer, "the capital of france is", "rome") == 1.0
    # "capital" -> "rome" (wrong, answer "madrid"), "madrid" -> "city" (right).
    assert token_accuracy(edited, hand_tokenizer, "spain has capital", "madrid city") == 0.5
    assert token_accuracy(edited, hand_tokenizer, "capital of france", "rome") == 0.0


def test_edit_metrics_by_hand(hand_tokenizer, hand_models):
    base, edited = hand_models
    evaluator = EditEvaluator(hand_tokenizer, HAND_RECORDS, batch_size=3)
    metrics = evaluator.evaluate(edited, evaluator.base_predictions(base))
    # Edit Succ: record 0 "is"->"rome" 1/1, record 1 1/2 (see above) -> (100 + 50) / 2.
    assert metrics.edit_succ == pytest.approx(75.0)
    # Generalization: only record 0 has rephrases: "capital"->"rome" 1, "france"->"paris" 0.
    assert metrics.generalization == pytest.approx(50.0)
    # Portability: only record 0: "rome town" 1/2 and "rome" 1 -> 75.
    assert metrics.portability == pytest.approx(75.0)
    # Locality: record 0: "by"->"smith" vs base "william", "william"->"jones" vs "shakespeare": 0.
    # Record 1: "looks"->"red" in both (agreement, though both are wrong: 1), "is"->"rome" vs
    # "blue": 0, so 0.5. Per record then over records: (0 + 50) / 2 = 25 (pooled items: 33.3).
    assert metrics.locality == pytest.approx(25.0)
    assert metrics.fluency is None
    assert metrics.as_dict() == {
        "edit_succ": 75.0,
        "generalization": 50.0,
        "portability": 75.0,
        "locality": 25.0,
        "fluency": None,
    }
    # One kind each here: per-kind means equal the overall ones.
    assert metrics.by_kind == {"portability.Reasoning": 75.0, "locality.Relation_Specificity": 25.0}
    assert metrics.flat() == {**metrics.as_dict(), **metrics.by_kind}

    first, second = metrics.per_record
    assert (first["index"], first["source"], second["source"]) == (0, "hand:0", "hand:1")
    assert [i["score"] for i in first["items"]["generalization"]] == [100.0, 0.0]
    assert [i["score"] for i in first["items"]["portability"]] == [50.0, 100.0]
    assert first["items"]["portability"][0]["kind"] == "Reasoning"
    assert [i["score"] for i in second["items"]["locality"]] == [100.0, 0.0]
    assert (second["generalization"], second["portability"], second["locality"]) == (
        None,
        None,
        50.0,
    )


def test_locality_needs_a_matching_reference(hand_tokenizer, hand_models):
    base, edited = hand_models
    evaluator = EditEvaluator(hand_tokenizer, HAND_RECORDS)
    assert evaluator.evaluate(edited, None).locality is None
    assert evaluator.evaluate(base, evaluator.base_predictions(base)).locality == 100.0
    other = EditEvaluator(hand_tokenizer, HAND_RECORDS[:1])
    with pytest.raises(ValueError, match="different EditEvaluator"):
        evaluator.evaluate(edited, other.base_predictions(base))


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward takes only ids and mask (no `logits_to_keep`, no KV cache)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_full_logits_fallback_gives_same_predictions(hand_tokenizer, hand_models):
    _, edited = hand_models
    evaluator = EditEvaluator(hand_tokenizer, HAND_RECORDS, batch_size=2)
    for batch in evaluator.accuracy_batches + evaluator.locality_batches:
        assert torch.equal(
            predict_answer_tokens(_NoLogitsToKeep(edited), batch),
            predict_answer_tokens(edited, batch),
        )


def test_bad_answer_names_record_and_field(hand_tokenizer):
    bad = EditRecord(
        prompt="spain has capital",
        target_new="madrid",
        portability=(QA("italy has capital", ""),),
        source="f.json:7",
    )
    with pytest.raises(UserError, match=r"f\.json:7: field 'portability\[0\]'"):
        EditEvaluator(hand_tokenizer, [bad])
    with pytest.raises(UserError, match="empty"):
        EditEvaluator(hand_tokenizer, [])


# -- batched == one at a time on real ZsRE records ----------------------------------------------


@pytest.fixture(scope="module")
def zsre_records():
    return load_edit_records(ZSRE, limit=20).records


NOISE = 0.02  # std of the noise added to the last MLP; moves some but not all argmaxes


def _perturbed(model, seed: int, scale: float = NOISE):
    """A copy of `model` with noise on its last MLP, so its argmax agrees with the original only partly."""
    edited = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in decoder_layers(edited)[-1].mlp.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return edited


def _one_at_a_time(model, tokenizer, examples):
    with torch.no_grad():
        return [
            model(input_ids=torch.tensor([ex.input_ids])).logits[0, ex.answer_start - 1 : -1]
            for ex in examples
        ]


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_batched_equals_one_at_a_time(arch, tiny_tokenizer, zsre_records):
    base = build_tiny_model(arch, len(tiny_tokenizer), hidden=32, layers=2, seed=0)
    edited = _perturbed(base, seed=1)
    evaluator = EditEvaluator(tiny_tokenizer, zsre_records, batch_size=6)
    metrics = evaluator.evaluate(edited, evaluator.base_predictions(base))

    for record, row in zip(zsre_records, metrics.per_record, strict=True):
        assert row["edit_succ"] == pytest.approx(
            100 * token_accuracy(edited, tiny_tokenizer, record.prompt, record.target_new), abs=1e-6
        )
        rephrase = [
            token_accuracy(edited, tiny_tokenizer, p, record.target_new)
            for p in record.rephrase_prompts
        ]
        assert [it["score"] for it in row["items"]["generalization"]] == pytest.approx(
            [100 * a for a in rephrase], abs=1e-6
        )
        port = [
            token_accuracy(edited, tiny_tokenizer, qa.prompt, qa.answer)
            for qa in record.portability
        ]
        assert [it["score"] for it in row["items"]["portability"]] == pytest.approx(
            [100 * a for a in port], abs=1e-6
        )
        loc_examples = [
            encode_example(tiny_tokenizer, qa.prompt, qa.answer) for qa in record.locality
        ]
        agreement = [
            (e.argmax(-1) == b.argmax(-1)).sum().item() / len(e)
            for e, b in zip(
                _one_at_a_time(edited, tiny_tokenizer, loc_examples),
                _one_at_a_time(base, tiny_tokenizer, loc_examples),
                strict=True,
            )
        ]
        assert [it["score"] for it in row["items"]["locality"]] == pytest.approx(
            [100 * a for a in agreement], abs=1e-6
        )
    # The perturbation changes some locality predictions but not all: the comparison has teeth.
    assert 0.0 < metrics.locality < 100.0

    # Padded logits at answer positions equal the unpadded ones, batch by batch.
    examples = [encode_example(tiny_tokenizer, r.prompt, r.target_new) for r in zsre_records]
    from mm4ke_ray.evaluate.accuracy import build_batches

    singles = torch.cat(_one_at_a_time(edited, tiny_tokenizer, examples))
    for batch in build_batches(examples, 7, tiny_tokenizer.pad_token_id):
        with torch.no_grad():
            padded = edited(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[
                batch.predict_mask
            ]
        assert (
            batch.attention_mask.sum() < batch.attention_mask.numel()
            or batch.input_ids.shape[0] == 1
        )
        torch.testing.assert_close(padded, singles[batch.token_index], atol=1e-6, rtol=0)
        assert torch.equal(
            predict_answer_tokens(edited, batch), singles[batch.token_index].argmax(-1)
        )


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_batch_size_does_not_change_results(
    prompt_format, tiny_tokenizer, zsre_records, tiny_model_factory
):
    base = tiny_model_factory("qwen2", hidden=32, layers=2)
    edited = _perturbed(base, seed=3)
    one = EditEvaluator(tiny_tokenizer, zsre_records[:8], prompt_format=prompt_format, batch_size=1)
    many = EditEvaluator(
        tiny_tokenizer, zsre_records[:8], prompt_format=prompt_format, batch_size=32
    )
    a = one.evaluate(edited, one.base_predictions(base))
    b = many.evaluate(edited, many.base_predictions(base))
    assert a.per_record == b.per_record and a.as_dict() == b.as_dict()
    assert 0.0 < a.locality < 100.0
    assert (
        many.evaluate(base, many.base_predictions(base)).locality == 100.0
    )  # the model against itself
    record = zsre_records[0]
    single = token_accuracy(edited, tiny_tokenizer, record.prompt, record.target_new, prompt_format)
    assert a.per_record[0]["edit_succ"] == pytest.approx(100 * single, abs=1e-6)


# -- fluency ------------------------------------------------------------------------------------


def test_ngram_entropy_by_hand():
    text = "the cat sat on the cat sat"
    # Bigrams (6): (the,cat) x2, (cat,sat) x2, (sat,on), (on,the) -> freqs 2/6, 2/6, 1/6, 1/6.
    h2 = 2 * (1 / 3) * math.log2(3) + 2 * (1 / 6) * math.log2(6)  # = 1.918296...
    # Trigrams (5): (the,cat,sat) x2, (cat,sat,on), (sat,on,the), (on,the,cat) -> 2/5, 1/5 x 3.
    h3 = (2 / 5) * math.log2(5 / 2) + 3 * (1 / 5) * math.log2(5)  # = 1.921928...
    # EasyEdit: mean([2/3 * H2, 4/3 * H3]) = H2/3 + 2*H3/3.
    assert ngram_entropy(text) == pytest.approx(h2 / 3 + 2 * h3 / 3, abs=1e-12)
    assert ngram_entropy(text) == pytest.approx(1.920717, abs=1e-6)
    # Repetition lowers it: one bigram, one trigram -> 0 bits.
    assert ngram_entropy("go go go go go") == 0.0
    assert ngram_entropy("") == 0.0 and ngram_entropy("single") == 0.0


def test_word_tokens_follow_treebank_rules():
    assert word_tokens("Don't stop, it's 3.5 well-known cities...") == [
        "Do",
        "n't",
        "stop",
        ",",
        "it",
        "'s",
        "3.5",
        "well-known",
        "cities",
        "...",
    ]
    assert word_tokens("Paris (France) is big.") == ["Paris", "(", "France", ")", "is", "big", "."]


def test_fluency_generation_is_seeded(tiny_tokenizer, tiny_model_factory):
    model = tiny_model_factory("qwen2", hidden=32, layers=2)
    prompt = "What species is ZIC3 specific to"
    first = generate_for_fluency(model, tiny_tokenizer, prompt, seed=3, max_length=30)
    assert first == generate_for_fluency(model, tiny_tokenizer, prompt, seed=3, max_length=30)
    assert first != generate_for_fluency(model, tiny_tokenizer, prompt, seed=4, max_length=30)
    assert first.startswith(prompt)
    # Without a KV cache (full recompute each step) the same seed samples the same text.
    assert first == generate_for_fluency(
        _NoLogitsToKeep(model), tiny_tokenizer, prompt, seed=3, max_length=30
    )


def test_evaluate_with_fluency_repeats(tiny_tokenizer, zsre_records, tiny_model_factory):
    model = tiny_model_factory("gpt2", hidden=32, layers=2)
    evaluator = EditEvaluator(tiny_tokenizer, zsre_records[:2])
    model.train()  # GPT-2 has dropout: scoring must switch it off, and restore the mode after
    a = evaluator.evaluate(model, None, fluency=True, fluency_seed=5)
    b = evaluator.evaluate(model, None, fluency=True, fluency_seed=5)
    assert model.training
    assert a.fluency == b.fluency and [r["fluency_text"] for r in a.per_record] == [
        r["fluency_text"] for r in b.per_record
    ]
    rows = a.per_record
    assert a.fluency == pytest.approx(sum(r["fluency"] for r in rows) / len(rows))
    assert rows[0]["fluency"] == pytest.approx(100 * ngram_entropy(rows[0]["fluency_text"]))
    assert a.fluency > 100  # a sampled 100-token text has several bits of n-gram entropy


# -- packaging and CLI --------------------------------------------------------------------------


def test_package_import_is_lazy():
    # Importing the package loads neither torch nor lm-eval (general.py); names load on use.
    code = "import sys, mm4ke_ray.evaluate; assert not {'torch', 'lm_eval', 'mm4ke_ray.evaluate.general'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
    import mm4ke_ray.evaluate as ev
    from mm4ke_ray.evaluate.edit_metrics import EditEvaluator as direct

    assert ev.EditEvaluator is direct and "EditEvaluator" in dir(ev)
    with pytest.raises(AttributeError):
        ev.NoSuchName  # noqa: B018


def test_evaluate_cli(tmp_path, tiny_tokenizer, tiny_model_dir, capsys):
    from mm4ke_ray.cli import main
    from mm4ke_ray.modeling import load_model, load_tokenizer

    edited_dir = save_pretrained_pair(
        _perturbed(load_model(str(tiny_model_dir)), seed=2), tiny_tokenizer, tmp_path / "edited"
    )
    out = tmp_path / "metrics.json"
    common = [
        "evaluate",
        "--model",
        str(edited_dir),
        "--data",
        str(ZSRE),
        "--limit",
        "4",
        "--batch-size",
        "3",
    ]
    assert main([*common, "--base", str(tiny_model_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    aggregates = {"edit_succ", "generalization", "portability", "locality", "fluency"}
    assert aggregates <= set(report["metrics"])
    kinds = set(report["metrics"]) - aggregates  # per-kind means, flat names
    assert kinds and all(k.split(".")[0] in ("portability", "locality") for k in kinds)
    assert report["mode"] == "teacher-forced" and report["generation_metrics"] is None
    assert report["protocol"] == "sequential" and report["prompt_format"] == "plain"
    assert report["n_records"] == 4 and len(report["per_record"]) == 4

    tokenizer = load_tokenizer(str(edited_dir))
    evaluator = EditEvaluator(tokenizer, load_edit_records(ZSRE, limit=4).records)
    expected = evaluator.evaluate(
        load_model(str(edited_dir)), evaluator.base_predictions(load_model(str(tiny_model_dir)))
    )
    assert report["metrics"] == pytest.approx(expected.flat())

    assert main([*common, "--out", str(out)]) == 2  # an earlier report is never overwritten silently
    assert "--force" in capsys.readouterr().err
    assert main([*common, "--out", str(out), "--force"]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["locality"] is None and "--base" in report["notes"][0]
    assert main([*common, "--batch-size", "0", "--out", str(out)]) == 2
    assert "--batch-size" in capsys.readouterr().err


# -- per-kind means on real KnowEdit WikiData records ----------------------------------------------

@pytest.mark.parametrize("path", [RECENT, COUNTERFACT], ids=["recent", "counterfact"])
def test_per_kind_means_on_wikidata(path):
    raw, records = kind_fixture_records(path, 40)
    tokenizer = hand_tokenizer_for(records)
    base = build_tiny_model("qwen2", len(tokenizer), hidden=32, layers=2, seed=0)
    edited = _perturbed(base, seed=3, scale=0.2)
    evaluator = EditEvaluator(tokenizer, records, batch_size=16)
    metrics = evaluator.evaluate(edited, evaluator.base_predictions(base))
    for group in ("portability", "locality"):
        want = raw_kinds(raw, group)
        got = {k.split(".", 1)[1]: v for k, v in metrics.by_kind.items() if k.startswith(group + ".")}
        assert set(got) == set(want), group  # every kind the data holds, nothing else
        for kind, value in got.items():
            # Per record the mean of its items of that kind, then over the records that have it.
            per_record = [
                sum(scores) / len(scores)
                for row in metrics.per_record
                if (scores := [i["score"] for i in row["items"][group] if i["kind"] == kind])
            ]
            assert len(per_record) == want[kind]
            assert value == pytest.approx(sum(per_record) / len(per_record))
    assert {"Relation_Specificity", "Forgetfulness"} <= {
        k.split(".", 1)[1] for k in metrics.by_kind if k.startswith("locality.")
    }
    assert {"Subject_Aliasing", "Reasoning", "Logical_Generalization"} & {
        k.split(".", 1)[1] for k in metrics.by_kind if k.startswith("portability.")
    }


def test_per_kind_means_weight_zsre_records():
    # ZsRE holds exactly one portability kind per record: the overall mean is the per-kind means
    # weighted by their record counts.
    raw, records = kind_fixture_records(ZSRE, 40)
    tokenizer = hand_tokenizer_for(records)
    model = build_tiny_model("qwen2", len(tokenizer), hidden=32, layers=2, seed=1)
    metrics = EditEvaluator(tokenizer, records, batch_size=16).evaluate(model, None)
    counts = raw_kinds(raw, "portability")
    assert sum(counts.values()) == len(records)
    weighted = sum(metrics.by_kind[f"portability.{k}"] * n for k, n in counts.items()) / len(records)
    assert metrics.portability == pytest.approx(weighted)
