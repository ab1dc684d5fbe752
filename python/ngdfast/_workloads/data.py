"""The workloads' data, as NumPy arrays (no torch here)."""

from __future__ import annotations

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
