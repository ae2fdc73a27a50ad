"""evaluation.general_chat_template: whether lm-eval's prompts go through the chat template.

SmolLM2-135M-Instruct scores SST-2 at chance through its chat template (0.52 on 100 documents)
and 0.62 with lm-eval's plain prompts, so a chat-edited model must be able to keep plain general
prompts; unset, the choice follows data.prompt_format as before."""

from __future__ import annotations

import pytest

from mm4ke_ray.config import validate_config
from mm4ke_ray.evaluate.candidate import eval_settings
from mm4ke_ray.fingerprint import fingerprint_fields
from mm4ke_ray.tracking.sweep_run import recorded_choices


def _config(prompt_format: str, chat_template: bool | None):
    evaluation = {"general_tasks": ["sst2"]}
    if chat_template is not None:
        evaluation["general_chat_template"] = chat_template
    return validate_config({"model": {"name": "/m"}, "data": {"edits": "/e.json", "prompt_format": prompt_format},
                            "evaluation": evaluation})


@pytest.mark.parametrize(("prompt_format", "setting", "resolved"), [
    ("chat", None, True), ("plain", None, False), ("chat", False, False), ("plain", True, True),
])
def test_resolved_everywhere_it_is_used_and_recorded(prompt_format, setting, resolved):
    config = _config(prompt_format, setting)
    assert config.general_chat_template is resolved
    assert eval_settings(config, "cpu").general_chat_template is resolved
    assert recorded_choices(config)["general_apply_chat_template"] is resolved
    assert fingerprint_fields(config)["evaluation.general_chat_template"] is resolved


def test_unset_and_its_resolved_value_fingerprint_alike_and_a_change_differs():
    assert fingerprint_fields(_config("chat", None)) == fingerprint_fields(_config("chat", True))
    assert fingerprint_fields(_config("chat", False)) != fingerprint_fields(_config("chat", True))


def test_the_evaluator_gets_the_setting(tiny_model_dir, tmp_path):
    from mm4ke_ray.evaluate.general import GeneralEvaluator
    from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task
    from mm4ke_ray.modeling import load_model, load_tokenizer

    docs = [{"question": f"q{i} city", "choices": ["Paris", "London"], "answer_index": i % 2} for i in range(4)]
    write_multiple_choice_task("tiny_mc", docs, tmp_path)
    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    plain = GeneralEvaluator(model, tok, ["tiny_mc"], apply_chat_template=False, include_path=tmp_path)
    assert plain.settings["general.apply_chat_template"] is False and plain.apply_chat_template is False
