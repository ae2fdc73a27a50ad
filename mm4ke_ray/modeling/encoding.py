"""Turn (prompt, answer) into token ids with the answer's position, the same way for training
and evaluation. `plain` is EasyEdit's `prompt + " " + answer`; `chat` wraps the prompt in the
tokenizer's chat template as the user turn and appends the answer as the assistant's reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptFormat = Literal["plain", "chat"]


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    answer_start: int  # index of the first answer token in input_ids

    @property
    def answer_ids(self) -> list[int]:
        return self.input_ids[self.answer_start :]


def format_prompt(tokenizer, prompt: str, prompt_format: PromptFormat = "plain") -> str:
    """The text that precedes the answer."""
    if prompt_format == "plain":
        return prompt
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_format 'chat' needs a tokenizer with a chat template; use 'plain'")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"prompt_format must be 'plain' or 'chat', got {prompt_format!r}")


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_example(tokenizer, prompt: str, answer: str, prompt_format: PromptFormat = "plain") -> EncodedExample:
    """Token ids of prompt+answer and where the answer starts.

    Tokenizes the joined text (as EasyEdit does) and takes the prompt's own token count as the
    boundary when the prompt's tokens are a prefix of the joined ones; otherwise (a tokenizer that
    merges across the boundary) it concatenates the two tokenizations so the boundary is exact.
    """
    if prompt_format == "plain":
        head, joined, special = prompt, f"{prompt} {answer}", True
    else:
        head = format_prompt(tokenizer, prompt, "chat")
        joined, special = head + answer, False  # the template already carries special tokens
    head_ids = _ids(tokenizer, head, special)
    full_ids = _ids(tokenizer, joined, special)
    if full_ids[: len(head_ids)] != head_ids or len(full_ids) <= len(head_ids):
        tail = _ids(tokenizer, (" " if prompt_format == "plain" else "") + answer, False)
        full_ids = head_ids + tail
    if len(full_ids) <= len(head_ids):
        raise ValueError(f"answer {answer!r} encodes to no tokens")
    return EncodedExample(input_ids=full_ids, answer_start=len(head_ids))


# What each side supervises / scores, recorded with every R-SFT run (rsft.json) so that a run says
# which definition it used. Evaluation always scores the answer tokens only (EasyEdit); training in
# `chat` format supervises what LLaMA-Factory's template supervises, the whole assistant slot:
# Qwen's is "{{content}}<|im_end|>\n", so the answer, the end-of-turn token and the newline after
# it (issue 23 §2). The paper's threshold τ bounds the mean NLL over exactly these tokens, so a
# chat-edited model's τ means what it meant in the paper, and the model stops after the answer.
TRAIN_SUPERVISION = {
    "plain": "answer tokens (EasyEdit)",
    "chat": "answer tokens + the assistant's end-of-turn token + the whitespace after it, e.g. <|im_end|> and "
            "the newline (LLaMA-Factory's assistant slot)",
}
# The same rule in short, a param and a fingerprint field (`rsft.supervised`).
SUPERVISED = {"plain": "answer", "chat": "answer+eot"}
EVAL_SCORING = "answer tokens only (EasyEdit), in every prompt format"


def end_of_turn_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """The token ids the chat template puts right after the assistant's `answer` to close its
    turn: up to and including its first special token (Qwen's `<|im_end|>`, Llama 3's
    `<|eot_id|>`, the tiny template's `<eos>`) and the whitespace-only tokens right after it
    (Qwen's newline), as LLaMA-Factory's assistant slot "{{content}}<|im_end|>\n" supervises them;
    what follows (the next turn) is not part of the reply.

    Found by rendering the conversation with the answer as the assistant's message and taking
    the text after the answer. Raises ValueError when the template does not render the reply
    after the generation prompt, or puts no special token after it.
    """
    head = format_prompt(tokenizer, prompt, "chat")
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(head) or not full[len(head) :].startswith(answer):
        raise ValueError(
            "the chat template does not render the assistant's reply right after the generation prompt; "
            "cannot find its end-of-turn token (use prompt_format 'plain')"
        )
    tail = _ids(tokenizer, full[len(head) + len(answer) :], False)
    special = set(tokenizer.all_special_ids)
    for i, t in enumerate(tail):
        if t in special:
            end = i + 1
            while end < len(tail) and tail[end] not in special and not tokenizer.decode([tail[end]]).strip():
                end += 1
            return tail[:end]
    raise ValueError(
        "the chat template puts no special token after the assistant's reply; "
        "cannot find its end-of-turn token (use prompt_format 'plain')"
    )


def encode_training_example(
    tokenizer, prompt: str, answer: str, prompt_format: PromptFormat = "plain"
) -> EncodedExample:
    """What R-SFT trains on: `encode_example` (the evaluation's encoding, unchanged), and in `chat`
    format the end of the assistant's turn appended (`end_of_turn_ids`), supervised with the
    answer (`TRAIN_SUPERVISION`): every token from `answer_start` on is a label."""
    enc = encode_example(tokenizer, prompt, answer, prompt_format)
    if prompt_format != "chat":
        return enc
    return EncodedExample(
        input_ids=enc.input_ids + end_of_turn_ids(tokenizer, prompt, answer),
        answer_start=enc.answer_start,
    )
