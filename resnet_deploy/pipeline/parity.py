"""Numerical agreement between two sets of logits (used by the fold and export checks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parity:
    """max_rel_diff is max |a - b| divided by max |reference|: relative to the logits' scale."""

    max_abs_diff: float
    max_rel_diff: float
    samples: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_rel_diff)) and self.max_rel_diff <= self.tolerance

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "samples": self.samples,
            "tolerance": self.tolerance,
            "passed": self.passed,
        }


def compare_logits(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> Parity:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = np.abs(reference - candidate)
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.all(np.isfinite(candidate)):
        max_abs = float("inf")
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    return Parity(max_abs, max_rel, int(reference.shape[0]), tolerance)
