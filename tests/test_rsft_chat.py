"""Chat format: training supervises the assistant's end of turn (as LLaMA-Factory: the end-of-turn
token and the newline after it); evaluation keeps EasyEdit's answer tokens; both definitions are
recorded with the run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer
from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling import encode_example
from mm4ke_ray.modeling.encoding import encode_training_example, end_of_turn_ids
from mm4ke_ray.rsft import RSFTConfig, run_rsft

PROMPT, ANSWER = "Which river flows through the old town", "the green river"


@pytest.fixture(scope="module")
def tok():
    # Qwen-like: the turn ends with a special token and a newline, then the next turn may follow.
    tok = build_word_tokenizer([PROMPT, ANSWER, "system : You are kind next"])
    tok.chat_template = (
        "system : You are kind <eos> next "
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> next {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    return tok


def test_training_adds_the_end_of_turn_token_evaluation_does_not(tok):
    eos = tok.convert_tokens_to_ids("<eos>")
    assert end_of_turn_ids(tok, PROMPT, ANSWER) == [eos]  # up to the special token, not "next"
    evaluation = encode_example(tok, PROMPT, ANSWER, "chat")
    training = encode_training_example(tok, PROMPT, ANSWER, "chat")
    assert training.input_ids == evaluation.input_ids + [eos]
    assert training.answer_start == evaluation.answer_start
    assert tok.decode(evaluation.answer_ids) == ANSWER  # EasyEdit's answer tokens, unchanged
    plain = encode_training_example(tok, PROMPT, ANSWER, "plain")
    assert plain == encode_example(tok, PROMPT, ANSWER, "plain")  # plain: answer tokens only


def test_template_without_end_token_is_refused(tok):
    bare = build_word_tokenizer([PROMPT, ANSWER])
    bare.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    record = EditRecord(prompt=PROMPT, target_new=ANSWER, source="x:0")
    model = build_tiny_model("qwen2", len(bare), hidden=32, layers=2)
    with pytest.raises(UserError, match=r"edit record 0 \(x:0\).*end-of-turn"):
        run_rsft(model, bare, [record], RSFTConfig(layer=1, prompt_format="chat"))


def test_chat_rsft_learns_to_close_the_turn(tok):
    eos = tok.convert_tokens_to_ids("<eos>")
    model = build_tiny_model("qwen2", len(tok), hidden=32, layers=2, seed=1)
    record = EditRecord(prompt=PROMPT, target_new=ANSWER)
    enc = encode_training_example(tok, PROMPT, ANSWER, "chat")
    ids = torch.tensor([enc.input_ids])
    s = enc.answer_start
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    with_eot = F.cross_entropy(logits[s - 1 : -1], ids[0, s:]).item()
    config = RSFTConfig(layer=1, epochs=3, steps=6, lr=1e-2, threshold=0.0, prompt_format="chat")
    result = run_rsft(model, tok, [record], config)
    assert result.samples[0]["losses"][0] == pytest.approx(with_eot, rel=1e-5)
    doc = result.as_json()
    assert "end-of-turn" in doc["supervision"]["train"]
    assert "answer tokens only" in doc["supervision"]["evaluation"]
    # Merged, the model ends its reply after the new answer: the last answer position predicts
    # the end-of-turn token (the untrained model does not).
    params = dict(model.named_parameters())
    assert logits[-2].argmax().item() != eos
    with torch.no_grad():
        for n, d in result.delta.items():
            params[n].add_(d)
        after = model(input_ids=ids).logits[0]
    assert after[-2].argmax().item() == eos
    assert after[s - 1 : -2].argmax(-1).tolist() == ids[0, s:-1].tolist()


# A ChatML tokenizer (Qwen's turn format), byte-level BPE as Qwen's, so "\n" is a token of its own.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chatml():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([PROMPT, ANSWER, "user\nassistant\nsystem\n"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML
    return fast


def test_chatml_training_supervises_the_answer_im_end_and_the_newline(chatml):
    # LLaMA-Factory's qwen template: the assistant slot is "{{content}}<|im_end|>\n", all supervised.
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    newline = chatml("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    assert end_of_turn_ids(chatml, PROMPT, ANSWER) == [im_end, *newline]
    evaluation = encode_example(chatml, PROMPT, ANSWER, "chat")
    training = encode_training_example(chatml, PROMPT, ANSWER, "chat")
    assert training.input_ids == evaluation.input_ids + [im_end, *newline]
    assert chatml.decode(training.answer_ids) == ANSWER + "<|im_end|>\n"  # R-SFT's labels
    assert chatml.decode(evaluation.answer_ids) == ANSWER  # teacher-forced scoring: the answer only
    # The whole training sequence is the template's own rendering of the exchange.
    rendered = chatml.apply_chat_template([{"role": "user", "content": PROMPT},
                                           {"role": "assistant", "content": ANSWER}], tokenize=False)
    assert chatml.decode(training.input_ids) == rendered
    assert encode_training_example(chatml, PROMPT, ANSWER, "plain") == encode_example(chatml, PROMPT, ANSWER, "plain")


def test_chatml_rsft_loss_is_over_answer_im_end_and_newline_and_the_rule_is_recorded(chatml):
    model = build_tiny_model("qwen2", len(chatml), hidden=32, layers=2, seed=2)
    enc = encode_training_example(chatml, PROMPT, ANSWER, "chat")
    ids, s = torch.tensor([enc.input_ids]), enc.answer_start
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    supervised = F.cross_entropy(logits[s - 1 : -1], ids[0, s:]).item()
    answer_only = F.cross_entropy(logits[s - 1 : -3], ids[0, s:-2]).item()
    config = RSFTConfig(layer=1, epochs=1, steps=1, lr=1e-3, threshold=0.0, prompt_format="chat")
    result = run_rsft(model, chatml, [EditRecord(prompt=PROMPT, target_new=ANSWER)], config)
    first = result.samples[0]["losses"][0]
    assert first == pytest.approx(supervised, rel=1e-5) and first != pytest.approx(answer_only, rel=1e-3)
    assert result.as_json()["supervision"]["rule"] == "answer+eot"
    assert "newline" in result.as_json()["supervision"]["train"]


def test_the_chat_supervision_rule_is_a_param_and_in_the_fingerprint():
    from mm4ke_ray.config import validate_config
    from mm4ke_ray.fingerprint import fingerprint, fingerprint_fields
    from mm4ke_ray.tracking.sweep_run import recorded_choices

    chat, plain = (validate_config({"data": {"prompt_format": f}}) for f in ("chat", "plain"))
    assert recorded_choices(chat)["rsft_supervised"] == "answer+eot"
    assert recorded_choices(plain)["rsft_supervised"] == "answer"
    assert fingerprint_fields(chat)["rsft.supervised"] == "answer+eot"
    # plain R-SFT is unchanged: no new field, so plain sweeps from before still compare
    assert "rsft.supervised" not in fingerprint_fields(plain)
    older_chat = {k: v for k, v in fingerprint_fields(chat).items() if k != "rsft.supervised"}
    assert fingerprint(older_chat) != fingerprint(fingerprint_fields(chat))  # a chat sweep from before does not
