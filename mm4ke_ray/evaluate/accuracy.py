"""Teacher-forced token accuracy, EasyEdit's definition, one at a time and batched.

`acc(prompt, target)`: encode `prompt + " " + target` (via `encode_example`, so training and
evaluation agree), and at every answer position compare the argmax of the previous position's
logits with the answer token; the score is the mean over the answer tokens.

The batched path right-pads a batch and passes the attention mask. With causal attention and
right padding, each real position sees exactly the tokens it would see unpadded and keeps its
position id, so its logits equal the unpadded ones (a test checks this).

`PrefixCache` keeps, per evaluation batch, the hidden state entering block L, so that merge
candidates which only change blocks >= L run only those blocks (`predict_answer_tokens(...,
prefix=...)`); the predictions equal the full forward's (a test checks this).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mm4ke_ray.modeling import EncodedExample, capture_prefix, encode_example, skip_prefix
from mm4ke_ray.modeling.encoding import PromptFormat


def model_device(model) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


@torch.no_grad()
def token_accuracy(
    model, tokenizer, prompt: str, target: str, prompt_format: PromptFormat = "plain"
) -> float:
    """EasyEdit's teacher-forced accuracy of `target` after `prompt`, in [0, 1], one unpadded pass.

    This is the reference the batched evaluator is tested against.
    """
    enc = encode_example(tokenizer, prompt, target, prompt_format)
    ids = torch.tensor([enc.input_ids], device=model_device(model))
    logits = model(input_ids=ids).logits[0]
    # The logits at position t predict token t + 1.
    predicted = logits[enc.answer_start - 1 : -1].argmax(-1)
    answer = ids[0, enc.answer_start :]
    return (predicted == answer).sum().item() / answer.numel()  # float64, as EasyEdit's np.mean


@dataclass(frozen=True)
class PaddedBatch:
    """Right-padded examples plus where their answer tokens are.

    `predict_mask[b, t]` is True where position t's logits predict an answer token of row b;
    `labels` holds those answer tokens in row-major order of the mask (row by row, ascending
    positions), and `token_index` maps each of them to its place in the evaluator's flat list of
    all answer tokens, so results of differently ordered batches can be scattered back.
    """

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 1 on real tokens
    predict_mask: torch.Tensor  # (B, T) bool
    labels: torch.Tensor  # (N,) long
    token_index: torch.Tensor  # (N,) long
    key: str = ""  # stable name, e.g. "locality:3", for caches keyed by batch

    def to(self, device: torch.device | str) -> PaddedBatch:
        """The same batch with every tensor on `device`."""
        tensors = (
            self.input_ids,
            self.attention_mask,
            self.predict_mask,
            self.labels,
            self.token_index,
        )
        return PaddedBatch(*(t.to(device) for t in tensors), key=self.key)


def build_batches(
    examples: Sequence[EncodedExample], batch_size: int, pad_id: int, name: str = "batch"
) -> list[PaddedBatch]:
    """Group `examples` into right-padded batches of at most `batch_size` rows.

    Examples are sorted by length first so a batch carries little padding. Answer tokens are
    numbered in the order of `examples` (example 0's answer tokens first); `token_index` of each
    batch says where its predictions go in that flat numbering.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    offsets, total = [], 0
    for ex in examples:
        offsets.append(total)
        total += len(ex.input_ids) - ex.answer_start
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    batches = []
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        width = max(len(examples[i].input_ids) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        predict_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        labels, token_index = [], []
        for b, i in enumerate(rows):
            ex = examples[i]
            n, start = len(ex.input_ids), ex.answer_start
            input_ids[b, :n] = torch.tensor(ex.input_ids)
            attention_mask[b, :n] = 1
            predict_mask[b, start - 1 : n - 1] = True
            labels += ex.input_ids[start:]
            token_index += range(offsets[i], offsets[i] + n - start)
        batches.append(
            PaddedBatch(
                input_ids,
                attention_mask,
                predict_mask,
                torch.tensor(labels, dtype=torch.long),
                torch.tensor(token_index, dtype=torch.long),
                key=f"{name}:{len(batches)}",
            )
        )
    return batches


@torch.no_grad()
def predict_answer_tokens(
    model, batch: PaddedBatch, prefix: tuple[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """Argmax token ids at the batch's answer positions, shape (N,), in the order of `batch.labels`.

    Only the needed positions go through the LM head (transformers 5's 2-D boolean
    `logits_to_keep`), which matters with 150k-token vocabularies; models without it fall back
    to full logits. `prefix = (layer, hidden)` runs only blocks >= layer, starting from `hidden`
    (the state entering that block for this very batch, see `PrefixCache`).
    """
    if prefix is not None and prefix[0] > 0:
        with skip_prefix(model, prefix[0], prefix[1]):
            return predict_answer_tokens(model, batch)
    try:
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            logits_to_keep=batch.predict_mask,
            use_cache=False,  # one teacher-forced pass: a KV cache would only cost memory
        ).logits
        if logits.ndim == 2 and logits.shape[0] == batch.labels.numel():
            return logits.argmax(-1)
    except (TypeError, IndexError):
        pass  # an older transformers or a custom model: compute every position's logits
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits[batch.predict_mask].argmax(-1)


class PrefixCache:
    """Hidden states entering block L for fixed evaluation batches, shared by merge candidates.

    Every candidate whose delta only touches blocks >= L sees, at the input of block L, exactly
    the base model's hidden state for a given batch; compute it once per (L, batch) and run only
    blocks >= L afterwards (ideal speedup N / (N - L) for an N-block model). Entries are keyed by
    (layer, batch.key, device) and belong to one model: asked with another model object, the cache
    empties itself. Least recently used entries are dropped beyond `max_bytes`.

    The caller vouches that the model's blocks below L are unchanged since the entries were
    captured (true for in-place merge candidates of deltas on blocks >= L, restored after each).
    """

    def __init__(self, max_bytes: int = 2 << 30):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._model: weakref.ref | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (e.g. after the base model's low blocks changed for good)."""
        self._entries.clear()
        self.nbytes = 0

    def drop(self, name: str) -> None:
        """Drop the entries of the batches named `name` (keys "<name>:<i>"): batches no longer used."""
        for key in [k for k in self._entries if k[1].rsplit(":", 1)[0] == name]:
            old = self._entries.pop(key)
            self.nbytes -= old.numel() * old.element_size()

    def hidden(self, model, layer: int, batch: PaddedBatch, **forward_kwargs) -> torch.Tensor:
        """The state entering block `layer` for `batch`: cached, or captured now and kept.
        `forward_kwargs` (e.g. `position_ids`) go to the capturing forward; `batch.key` must name them too."""
        if self._model is None or self._model() is not model:
            self.clear()
            self._model = weakref.ref(model)
        key = (layer, batch.key, str(batch.input_ids.device))
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        hidden = capture_prefix(model, layer, batch.input_ids, batch.attention_mask, **forward_kwargs)
        size = hidden.numel() * hidden.element_size()
        if size <= self.max_bytes:
            while self._entries and self.nbytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.nbytes -= old.numel() * old.element_size()
            self._entries[key] = hidden
            self.nbytes += size
        return hidden
