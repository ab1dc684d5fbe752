"""The workloads' data, as NumPy arrays (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def load_digits_split(seed: int, test_size: float = 0.25):
    """Digits, stratified train/test split, standardised with training statistics.

    One mean and one standard deviation over all training pixels (as is usual for
    images) rather than per pixel: per-pixel scaling would blow up the few
    border pixels that are almost always blank into rare huge inputs.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    mean, std = X_train.mean(), X_train.std()
    return (X_train - mean) / std, y_train, (X_test - mean) / std, y_test


@dataclass(frozen=True)
class HelpText:
    """Python's English help topics as character ids: text every Python installation has.

    The topics of ``pydoc_data.topics`` (what ``help("if")`` prints; 79 of them,
    ≈ 465 000 characters) concatenated in sorted key order; the vocabulary is the
    sorted set of their characters; the first ``train_fraction`` of the ids is the
    training text, the rest (contiguous, so no sequence straddles both) held out.
    """

    vocab: str
    train: np.ndarray
    test: np.ndarray

    @classmethod
    def load(cls, train_fraction: float = 0.9) -> HelpText:
        from pydoc_data.topics import topics

        text = "".join(topics[key] for key in sorted(topics))
        vocab = "".join(sorted(set(text)))
        lookup = {c: i for i, c in enumerate(vocab)}
        ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
        cut = int(train_fraction * len(ids))
        return cls(vocab, ids[:cut], ids[cut:])

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)
