"""Baseline scores are kept per training set: re-evaluating a model does not refit LightGBM."""

from __future__ import annotations

import numpy as np

from nextbest.training.evaluate import cached_scores


def test_scores_are_fitted_once_per_key_and_a_damaged_file_is_fitted_again(tmp_path):
    calls = []

    def fit():
        calls.append(1)
        return np.arange(6, dtype=float).reshape(3, 2) * len(calls)

    first = cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", 42], fit)
    again = cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", 42], fit)
    assert len(calls) == 1 and np.array_equal(first, again)
    other = cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", 43], fit)  # another seed: fitted
    assert len(calls) == 2 and not np.array_equal(first, other)
    files = sorted(tmp_path.glob("lightgbm-nbp-*.npy"))
    assert len(files) == 2 and not list(tmp_path.glob(".*"))  # no temporary file left behind
    files[0].write_bytes(b"not an array")
    cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", 42], fit)
    cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", 43], fit)
    assert len(calls) == 3  # the damaged one only
    assert cached_scores(None, "x", [], fit) is not None and len(calls) == 4  # no cache: always fitted
    for seed in range(10):
        cached_scores(tmp_path, "lightgbm-nbp", ["nbp", "abc", seed], fit, keep=3)
    assert len(list(tmp_path.glob("lightgbm-nbp-*.npy"))) == 3  # the most recent only
