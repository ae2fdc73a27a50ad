"""lm-eval's HF model scoring each shared context once: one packed row per context.

lm-eval's `HFLM` runs every (context, continuation) pair as its own sequence, so a multiple-choice
document with four options runs its (often long) context four times. `SharedContextHFLM` groups
the requests by their context tokens and runs one row per context: the context, then every
distinct continuation (less its last token, which is never an input) side by side. A 4-D
attention mask lets each continuation see the context and itself only, and position ids restart
after the context for each continuation, so every scored token sees exactly the input it sees in
`HFLM`. Only the scored positions go through the LM head (transformers 5's boolean
`logits_to_keep`), not every position of every padded sequence.

Results equal `HFLM`'s up to float rounding (the same choice for every document; log-likelihoods
within 1e-5 in float32, tests/test_shared_context_lm.py). Requests HFLM would truncate (context +
continuation longer than the model), non-causal models, `batch_size="auto"` and mixed precision
take HFLM's own path. `loglikelihood_rolling` windows come through `_loglikelihood_tokens` too:
each window is its own context, run as HFLM runs it (no custom mask).

Reuse below layer L (`lm.layers_below_unchanged(L)`): a merge candidate of a delta on block L differs
from the base only from block L up, so the hidden state entering block L is the same for every
candidate of that delta. Inside the context manager it is captured once per packed batch
(`PrefixCache`, keyed by the batch's tokens) and only blocks >= L run afterwards. The caller
vouches that blocks below L have not changed since the states were captured.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mm4ke_ray.evaluate.accuracy import PrefixCache
from mm4ke_ray.modeling.prefix_cache import skip_prefix

__all__ = ["shared_context_hflm_class"]

PACKED_TOKENS = 2048  # longest row holding several continuations: its mask is (T, T) floats per row
Request = tuple[tuple[str, str] | None, list[int], list[int]]  # (strings, context ids, continuation ids)


@dataclass(frozen=True)
class _Row:
    """One context and its distinct continuations, packed as context + each continuation[:-1]."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)


def _rows(groups: dict[tuple, dict[tuple, list[int]]], limit: int) -> list[_Row]:
    """Rows of each context's continuations, at most `limit` tokens each (a continuation that
    does not fit beside others gets a row of its own), those sharing a context first, longest first.

    Keeping shared rows apart from single ones bounds the (batch, T, T) mask, built only for them.
    """
    rows = []
    for ctx, conts in groups.items():
        row: list[tuple] = []
        for cont in conts:
            if row and _Row(ctx, (*row, cont)).length > limit:
                rows.append(_Row(ctx, tuple(row)))
                row = []
            row.append(cont)
        rows.append(_Row(ctx, tuple(row)))
    return sorted(rows, key=lambda r: (len(r.continuations) == 1, -r.length))


@dataclass(frozen=True)
class _Packed:
    """A batch of packed rows as the model takes it; `key` names its content for the prefix cache."""

    key: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # (batch, 1, T, T) additive, or None: plain causal rows
    position_ids: torch.Tensor | None
    keep: torch.Tensor  # (batch, T) bool: positions whose logits are needed
    targets: list[list[tuple[list[int], list[int]]]]  # per row, per continuation: (flat logit rows, token ids)


def _pack(rows: Sequence[_Row], device: torch.device, dtype: torch.dtype) -> _Packed:
    """Right-padded ids, positions, block mask and scored positions of `rows`."""
    width = max(r.length for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)  # -1 pad, 0 context, j continuation j
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    spans = []
    for b, row in enumerate(rows):
        n = len(row.context)
        ids[b, :n] = torch.tensor(row.context)
        pos[b, :n] = torch.arange(n)
        seg[b, :n] = 0
        start, row_spans = n, []
        for j, cont in enumerate(row.continuations, start=1):
            m = len(cont) - 1
            ids[b, start:start + m] = torch.tensor(cont[:-1], dtype=torch.long)
            pos[b, start:start + m] = torch.arange(n, n + m)
            seg[b, start:start + m] = j
            # cont[0] is predicted at the context's last token, cont[k] at cont[k-1]'s position.
            at = [n - 1, *range(start, start + m)]
            keep[b, at] = True
            row_spans.append((at, list(cont)))
            start += m
        spans.append(row_spans)
    # Flat index of each kept position in the head's output (row-major order of `keep`).
    order = torch.cumsum(keep.flatten(), 0) - 1
    targets = [[([int(order[b * width + p]) for p in at], cont) for at, cont in row_spans]
               for b, row_spans in enumerate(spans)]
    key = hashlib.sha256(b"".join(t.numpy().tobytes() for t in (ids, pos, seg))).hexdigest()
    mask = positions = None
    # A row needs the block mask only where two continuations put tokens in it; one-token
    # continuations (SST-2's labels, letter choices) add none and are all scored at the context's
    # last token, so such a row is a plain causal sequence, as HFLM runs it.
    if any(sum(len(c) > 1 for c in r.continuations) > 1 for r in rows):
        q = torch.arange(width)
        causal = q[None, :] <= q[:, None]
        same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])
        allowed = (causal & same & (seg[:, None, :] >= 0)) | torch.eye(width, dtype=torch.bool)  # a pad sees itself
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        mask, positions = mask[:, None].to(device), pos.to(device)
    # Otherwise the rows are HFLM's inputs, right-padded; the model's own causal mask serves (pads
    # come after every scored position), as in HFLM.
    return _Packed(key, ids.to(device), mask, positions, keep.to(device), targets)


def _kept_logits(model, batch: _Packed, kwargs: dict) -> torch.Tensor:
    """Logits at `batch.keep`'s positions, (kept, vocab): only those go through the LM head
    (transformers 5's boolean `logits_to_keep`); a model without it gives every position's."""
    try:
        logits = model(input_ids=batch.input_ids, logits_to_keep=batch.keep, **kwargs).logits
        if logits.ndim == 2:
            return logits
    except (TypeError, IndexError):
        pass  # an older transformers or a custom model
    return model(input_ids=batch.input_ids, **kwargs).logits[batch.keep]


@functools.cache
def shared_context_hflm_class() -> type:
    """The `SharedContextHFLM` class (a subclass of lm-eval's `HFLM`); built on first use so that
    importing this module does not import lm-eval (~2.5 s)."""
    from lm_eval.models.huggingface import HFLM

    class SharedContextHFLM(HFLM):
        """`HFLM` that runs each shared context once and reuses the blocks below L across candidates.

        `prefix_cache_bytes` bounds the hidden states kept for `layers_below_unchanged` (least
        recently used batches are dropped beyond it).
        """

        def __init__(self, *args, prefix_cache_bytes: int = 2 << 30, **kwargs):
            super().__init__(*args, **kwargs)
            self.prefix_cache = PrefixCache(prefix_cache_bytes)
            self.first_layer: int | None = None
            self.rows_run = 0  # packed rows forwarded (one per distinct context), for benchmarks and tests

        @contextmanager
        def layers_below_unchanged(self, layer: int | None) -> Iterator[None]:
            """Within the block, the model's blocks below `layer` are the same as in every earlier
            call inside such a block: their outputs are reused. None or 0: nothing is reused."""
            if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
                raise ValueError(f"layer must be an int >= 0 (a block index), got {layer!r}")
            self.first_layer = layer
            try:
                yield
            finally:
                self.first_layer = None

        def _packs(self) -> bool:
            return (self.backend == "causal" and isinstance(self.batch_size, int)
                    and self.mixed_precision_dtype is None)

        def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> list[tuple[float, bool]]:
            if not self._packs():
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            truncated, groups = [], {}
            for i, (_, ctx, cont) in enumerate(requests):
                if not ctx or not cont or len(ctx) + len(cont) > self.max_length + 1:
                    truncated.append(i)  # HFLM's own checks and left truncation apply
                else:
                    groups.setdefault(tuple(ctx), {}).setdefault(tuple(cont), []).append(i)
            if truncated:
                plain = super()._loglikelihood_tokens([requests[i] for i in truncated], disable_tqdm=True,
                                                      override_bs=override_bs)
                for i, answer in zip(truncated, plain, strict=True):
                    results[i] = answer
            rows = _rows(groups, min(self.max_length, PACKED_TOKENS))
            size = override_bs or self.batch_size
            for first in range(0, len(rows), size):
                chunk = rows[first:first + size]
                for row, answers in zip(chunk, self._score(chunk), strict=True):
                    for cont, answer in zip(row.continuations, answers, strict=True):
                        for i in groups[row.context][cont]:
                            results[i] = answer
                            if requests[i][0] is not None:  # rolling windows are cached per document
                                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            return results

        @torch.no_grad()
        def _score(self, rows: Sequence[_Row]) -> list[list[tuple[float, bool]]]:
            """(log-likelihood, is greedy) of every continuation of `rows`, one forward pass."""
            dtype = next(self.model.parameters()).dtype
            batch = _pack(rows, self.device, dtype if dtype.is_floating_point else torch.float32)
            kwargs = {"attention_mask": batch.attention_mask, "position_ids": batch.position_ids, "use_cache": False}
            layer = self.first_layer
            if layer:
                hidden = self.prefix_cache.hidden(self.model, layer, batch, position_ids=batch.position_ids)
                with skip_prefix(self.model, layer, hidden):
                    logits = _kept_logits(self.model, batch, kwargs)
            else:
                logits = _kept_logits(self.model, batch, kwargs)
            self.rows_run += len(rows)
            logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # (kept positions, vocab)
            greedy = logprobs.argmax(-1)
            out = []
            for spans in batch.targets:
                answers = []
                for at, cont in spans:
                    index = torch.tensor(at, device=logprobs.device)
                    tokens = torch.tensor(cont, device=logprobs.device)
                    picked = logprobs[index].gather(1, tokens[:, None]).squeeze(1)
                    answers.append((float(picked.sum()), bool((greedy[index] == tokens).all())))
                out.append(answers)
            return out

    return SharedContextHFLM
