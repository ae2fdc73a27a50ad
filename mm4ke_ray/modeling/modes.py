"""Scoring a model that may be mid-training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Dropout off while scoring (a model fresh from R-SFT may be in training mode); the model's
    train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
