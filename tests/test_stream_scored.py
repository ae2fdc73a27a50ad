"""A stream's round scores only what it reports: the accuracy items (edit, rephrase, portability
prompts) of rounds 1..t and every record's locality, with exactly the numbers of scoring every
record and keeping those (`StreamEvaluator.evaluate`, the evaluators' `records=`)."""

from __future__ import annotations

import pytest
from test_stream import ROUNDS, _config

from mm4ke_ray.config import validate_config
from mm4ke_ray.evaluate.edit_metrics import EditEvaluator
from mm4ke_ray.evaluate.generation import GenerationEvaluator
from mm4ke_ray.evaluate.metric_rows import ITEM_METRICS


@pytest.fixture(scope="module")
def demo():
    from mm4ke_ray.demo.build import build_demo

    return build_demo()


def _accuracy_items(record) -> int:
    return 1 + len(record.rephrase_prompts) + len(record.portability)


@pytest.fixture(scope="module")
def rounds(demo, tmp_path_factory):
    """Per evaluated round t (0: the base): the new metrics, the full evaluation's metrics (every
    record's accuracy items scored, as before), both families' per-record rows of each, and the
    accuracy prompts the model was given by each family for the new evaluation."""
    from mm4ke_ray.stream.evaluation import StreamEvaluator
    from mm4ke_ray.stream.run import run_stream_config

    tmp = tmp_path_factory.mktemp("scored")
    config = validate_config(_config(demo, tmp))
    seen: dict[int, dict] = {}
    counts = {"forced": 0, "generated": 0}
    mp = pytest.MonkeyPatch()
    predict, generate, evaluate = EditEvaluator._predict, GenerationEvaluator.generate, StreamEvaluator.evaluate
    edit_evaluate, gen_evaluate = EditEvaluator.evaluate, GenerationEvaluator.evaluate
    rows: dict[str, list] = {}

    def counting_predict(self, model, batch):
        if batch.key.startswith("accuracy"):
            counts["forced"] += batch.input_ids.shape[0]
        return predict(self, model, batch)

    def counting_generate(self, model, items):
        counts["generated"] += sum(it.metric != "locality" for it in items)
        return generate(self, model, items)

    def keep_edit_rows(self, *args, **kwargs):
        out = edit_evaluate(self, *args, **kwargs)
        rows["forced"] = out.per_record
        return out

    def keep_gen_rows(self, *args, **kwargs):
        out = gen_evaluate(self, *args, **kwargs)
        rows["generated"] = out.per_record
        return out

    def both(self, upto, first_layer=None):
        counts.update(forced=0, generated=0)
        new = evaluate(self, upto, first_layer=first_layer)
        new_rows, new_counts = dict(rows), dict(counts)
        self.seen_records = lambda _: list(range(len(self.rounds)))  # every record: the evaluation before
        try:
            old = evaluate(self, upto, first_layer=first_layer)
        finally:
            del self.seen_records
        seen[upto] = {"new": new, "old": old, "new_rows": new_rows, "old_rows": dict(rows), "counts": new_counts,
                      "rounds": list(self.rounds), "records": self.candidate.records}
        return new

    mp.setattr(EditEvaluator, "_predict", counting_predict)
    mp.setattr(GenerationEvaluator, "generate", counting_generate)
    mp.setattr(EditEvaluator, "evaluate", keep_edit_rows)
    mp.setattr(GenerationEvaluator, "evaluate", keep_gen_rows)
    mp.setattr(StreamEvaluator, "evaluate", both)
    try:
        run_stream_config(config, tmp / "out", track=False)
    finally:
        mp.undo()
    return seen


def test_every_round_reports_exactly_the_full_evaluations_numbers(rounds):
    assert sorted(rounds) == list(range(ROUNDS + 1))
    for t, r in rounds.items():
        assert r["new"].keys() == r["old"].keys(), t
        for key, value in r["old"].items():
            assert r["new"][key] == value, (t, key)  # the same floats, not approximately
        assert "locality" in r["new"] and "gen.locality" in r["new"] and "current.gen.edit_succ" in r["new"]


def test_scored_records_have_the_full_evaluations_per_record_values(rounds):
    for t, r in rounds.items():
        for family in ("forced", "generated"):
            new, old = r["new_rows"][family], r["old_rows"][family]
            for i, (a, b) in enumerate(zip(new, old, strict=True)):
                assert a["locality"] == b["locality"], (t, family, i)  # every record's locality
                for m in ITEM_METRICS[:3]:
                    if r["rounds"][i] <= max(t, 1):
                        assert a[m] == b[m] and a["items"][m] == b["items"][m], (t, family, i, m)
                    else:
                        assert a[m] is None and not a["items"][m], (t, family, i, m)  # not scored


def test_a_round_scores_the_accuracy_items_of_its_rounds_so_far_only(rounds):
    r = rounds[ROUNDS]
    per_round = [sum(_accuracy_items(rec) for rec, s in zip(r["records"], r["rounds"], strict=True) if s <= t)
                 for t in range(1, ROUNDS + 1)]
    for t in range(ROUNDS + 1):
        counts = rounds[t]["counts"]
        assert counts["forced"] == counts["generated"] == per_round[max(t, 1) - 1], t
    assert rounds[1]["counts"]["forced"] < rounds[2]["counts"]["forced"] < rounds[3]["counts"]["forced"]


def test_building_a_stream_evaluator_scores_no_accuracy_item(demo, tmp_path, monkeypatch):
    """The base's references (locality predictions and answers, general tasks) only: round 0
    scores the base's edits itself, so a full base evaluation at construction would be paid twice."""
    from mm4ke_ray.evaluate.candidate import eval_settings
    from mm4ke_ray.stream.evaluation import StreamEvaluator, write_stream_edits
    from mm4ke_ray.stream.rounds import load_stream

    config = validate_config(_config(demo, tmp_path))
    stream = load_stream(config.stream, config.data.edits, limit=config.data.limit)
    counts = {"forced": 0, "generated": 0}
    predict, generate = EditEvaluator._predict, GenerationEvaluator.generate

    def counting_predict(self, model, batch):
        counts["forced"] += batch.input_ids.shape[0] if batch.key.startswith("accuracy") else 0
        return predict(self, model, batch)

    def counting_generate(self, model, items):
        counts["generated"] += sum(it.metric != "locality" for it in items)
        return generate(self, model, items)

    monkeypatch.setattr(EditEvaluator, "_predict", counting_predict)
    monkeypatch.setattr(GenerationEvaluator, "generate", counting_generate)
    evaluator = StreamEvaluator(eval_settings(config, "cpu"), write_stream_edits(stream, tmp_path), stream.round_of())
    assert counts == {"forced": 0, "generated": 0}
    assert evaluator.candidate.reference.generation is not None  # the locality references were made
    evaluator.evaluate(0)
    assert counts["forced"] > 0 and counts["generated"] > 0


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_a_record_subset_scores_its_accuracy_items_with_the_full_evaluations_values(arch, tiny_model_factory,
                                                                                   tiny_tokenizer):
    """`records=` on both evaluators: other batches (batch size 5: other rows, widths, padding),
    the same per-record values; the prefix cache keeps only the last subset's hidden states."""
    from conftest import ZSRE

    from mm4ke_ray.data import load_edit_records

    records = load_edit_records(str(ZSRE), limit=12).records
    model = tiny_model_factory(arch, hidden=32, layers=4, seed=3)
    forced = EditEvaluator(tiny_tokenizer, records, batch_size=5, prefix_cache=True)
    generated = GenerationEvaluator(tiny_tokenizer, records, batch_size=5, max_new_tokens=8)
    ref, gen_ref = forced.base_predictions(model), generated.base_generations(model)
    full = {"forced": forced.evaluate(model, ref, first_layer=2).per_record,
            "generated": generated.evaluate(model, gen_ref).per_record}
    for subset in ([0, 3, 4, 9], [1, 2, 5, 6, 7, 8, 10], []):
        got = {"forced": forced.evaluate(model, ref, first_layer=2, records=subset).per_record,
               "generated": generated.evaluate(model, gen_ref, records=subset).per_record}
        for family in got:
            for i, (a, b) in enumerate(zip(got[family], full[family], strict=True)):
                assert a["locality"] == b["locality"] and a["items"]["locality"] == b["items"]["locality"]
                for m in ITEM_METRICS[:3]:
                    want = (b[m], b["items"][m]) if i in subset else (None, [])
                    assert (a[m], a["items"][m]) == want, (family, subset, i, m)
        names = {key[1].rsplit(":", 1)[0] for key in forced.prefix_cache._entries}
        assert names == {"accuracy", "locality"} | ({forced._subset[1].name} if subset else set())  # earlier subsets' dropped
    with pytest.raises(ValueError, match="indices 0..11"):
        forced.evaluate(model, ref, records=[12])
    with pytest.raises(ValueError, match="indices 0..11"):
        generated.evaluate(model, gen_ref, records=[-1])
