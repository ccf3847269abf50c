"""Calibration methods and options, and the math that turns activation statistics into INT8 ranges.

All three methods read the same statistics (exact min/max plus a histogram of |x| per tensor), so one
pass over the calibration set serves every method and every target:

- max: the largest |x| seen (asymmetric targets use the exact min and max).
- entropy: TensorRT's KL-divergence calibration ("EntropyCalibration2", the algorithm of
  `modelopt.torch.quantization.calib.histogram._compute_amax_entropy`), vectorised: the divergence of
  every candidate threshold comes from prefix sums of the histogram instead of a Python loop per bin.
- percentile: the smallest threshold that keeps `percentile` % of the |x| values unclipped.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..options import Configurable, Setting

INT8_MAX = 127
QUANTIZED_BINS = 128  # TensorRT's entropy calibration merges the histogram into 128 levels (8 bits with sign)
ENTROPY_START_BIN = 128


class CalibrationMethod(enum.StrEnum):
    MAX = "max"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def parse_method(text: str, option: str = "--calib-method") -> CalibrationMethod:
    try:
        return CalibrationMethod(text.strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in CalibrationMethod)
        raise UserError(f"{option}: unknown method {text!r}; valid methods: {valid}") from None


def check_percentile(value: float, option: str = "--percentile") -> float:
    if not 50.0 < value <= 100.0:
        raise UserError(f"{option} must be in (50, 100], got {value}")
    return float(value)


def check_regex(text: str, option: str = "--exclude-layers") -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise UserError(f"{option} {text!r} is not a valid regular expression ({exc})") from None
    return text


@dataclass(frozen=True)
class CalibrationOptions(Configurable):
    """How the calibration set is drawn and turned into ranges; what stays in higher precision."""

    SETTINGS = (
        Setting("calib_size", int, "Calibration images drawn from --calib-data.", 512, limits=(1, 10_000_000), field="size"),
        Setting("seed", int, "Seed of the calibration and selection draws.", 0, limits=(0, 2**32 - 1)),
        Setting(
            "calib_method",
            str,
            "INT8 activation ranges: max, entropy or percentile.",
            "entropy",
            parse=parse_method,
            field="method",
        ),
        Setting("percentile", float, "For --calib-method percentile.", 99.99, parse=check_percentile),
        Setting(
            "exclude_layers",
            str,
            "Regex of node names / module paths kept in higher precision (e.g. '^conv1$|^fc$').",
            parse=lambda text, option: check_regex(text, option) if text else None,  # empty: none excluded
        ),
        Setting("calib_cache", Path, "calib.json of an earlier run: reused when nothing changed.", field="cache"),
    )

    size: int = 512  # images drawn from --calib-data (MLPerf calibrates ResNet-50 with 500)
    seed: int = 0
    method: CalibrationMethod = CalibrationMethod.ENTROPY
    percentile: float = 99.99
    exclude_layers: str | None = None  # regex on node names and PyTorch module paths
    cache: Path | None = None  # calib.json of an earlier run, reused when nothing changed

    def __post_init__(self) -> None:
        self.check_ranges()
        check_percentile(self.percentile)
        if self.exclude_layers is not None:
            check_regex(self.exclude_layers)

    def as_dict(self) -> dict[str, object]:
        return {
            "size": self.size,
            "seed": self.seed,
            "method": self.method.value,
            "percentile": self.percentile if self.method is CalibrationMethod.PERCENTILE else None,
            "exclude_layers": self.exclude_layers,
        }


# ---------------------------------------------------------------------------------------- the math


def percentile_amax(counts: np.ndarray, width: float, percentile: float) -> float:
    """Upper edge of the histogram bin where the cumulative share of |x| reaches `percentile` %."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts, dtype=np.float64) / total
    index = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return float(min(index + 1, len(counts)) * width)


def entropy_amax(counts: np.ndarray, width: float, stride: int = 1) -> float:
    """Threshold that minimises the KL divergence between the |x| histogram and its 128-level quantization.

    Same definition as TensorRT / ModelOpt (`_compute_amax_entropy` with num_bits=8, start_bin=128):
    for each candidate i, the reference P is bins[:i] with the clipped tail added to the last bin; the
    candidate Q merges bins[:i] into 128 groups and spreads each group's count evenly over its non-empty
    bins. Bin 0 takes the count of bin 1 first (the zeros of a ReLU would dominate otherwise).
    Ties go to the largest threshold. Vectorised with prefix sums: O(candidates x 128).
    """
    bins = counts.astype(np.float64)
    length = len(bins)
    if length < ENTROPY_START_BIN or bins.sum() == 0:
        return float(length * width)  # too few bins to search (the tensor is (almost) constant): use max
    bins[0] = bins[1]
    total = bins.sum()
    cum = np.concatenate(([0.0], np.cumsum(bins)))
    nonzero = np.concatenate(([0], np.cumsum(bins > 0)))
    xlogx = np.zeros_like(bins)
    positive = bins > 0
    xlogx[positive] = bins[positive] * np.log(bins[positive])
    cum_xlogx = np.concatenate(([0.0], np.cumsum(xlogx)))

    candidates = np.arange(ENTROPY_START_BIN, length + 1, stride, dtype=np.int64)
    groups = np.arange(QUANTIZED_BINS + 1, dtype=np.int64)
    # np.digitize(range(i), np.linspace(0, i, 129)) - 1 puts bin j in group floor(128 j / i): group g
    # starts at bin ceil(g i / 128). (linspace's edges k * (i / 128) are exact binary fractions.)
    starts = (groups[None, :] * candidates[:, None] + QUANTIZED_BINS - 1) // QUANTIZED_BINS
    group_sum = cum[starts[:, 1:]] - cum[starts[:, :-1]]
    group_nonzero = nonzero[starts[:, 1:]] - nonzero[starts[:, :-1]]
    filled = group_nonzero > 0
    per_bin = np.where(filled, group_sum / np.where(filled, group_nonzero, 1), 1.0)
    cross = np.where(filled & (group_sum > 0), group_sum * np.log(np.where(group_sum > 0, per_bin, 1.0)), 0.0).sum(axis=1)

    tail = total - cum[candidates]
    last = bins[candidates - 1]
    last_p = last + tail
    p_log_p = cum_xlogx[candidates - 1] + np.where(last_p > 0, last_p * np.log(np.where(last_p > 0, last_p, 1.0)), 0.0)
    # the tail moved into the last bin meets that bin's Q value (same group as the last bin)
    cross = cross + np.where(tail > 0, tail * np.log(np.where(last > 0, per_bin[:, -1], 1.0)), 0.0)
    kept = cum[candidates]
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (p_log_p - cross) / total - np.log(total) + np.log(kept)
    divergence = np.where(((last == 0) & (tail > 0)) | (kept <= 0), np.inf, divergence)
    best = len(divergence) - 1 - int(np.argmin(divergence[::-1]))
    return float(candidates[best] * width)


@dataclass(frozen=True)
class TensorRange:
    """The calibrated range of one activation tensor.

    `amax` is the symmetric clipping threshold (TensorRT: scale = amax / 127, zero point 0); `low` and
    `high` are the asymmetric range for unsigned activations (ONNX Runtime's U8), clipped at amax.
    """

    minimum: float
    maximum: float
    amax: float

    @property
    def low(self) -> float:
        return max(self.minimum, -self.amax)

    @property
    def high(self) -> float:
        return min(self.maximum, self.amax)

    @property
    def scale(self) -> float:
        """Symmetric INT8 scale; a constant-zero tensor gets 1/127 (any scale represents it)."""
        return self.amax / INT8_MAX if self.amax > 0 else 1.0 / INT8_MAX

    def as_dict(self) -> dict[str, float]:
        return {"min": self.minimum, "max": self.maximum, "amax": self.amax, "scale": self.scale, "range": [self.low, self.high]}


def tensor_amax(
    minimum: float, maximum: float, counts: np.ndarray | None, width: float, method: CalibrationMethod, percentile: float
) -> float:
    """amax of one tensor by `method`; never above the largest |x| actually seen."""
    observed = max(abs(minimum), abs(maximum))
    if method is CalibrationMethod.MAX or counts is None or observed == 0:
        return observed
    if method is CalibrationMethod.ENTROPY:
        return min(entropy_amax(counts, width), observed)
    return min(percentile_amax(counts, width, percentile), observed)
