"""The calibration stage: draw the calibration set, measure it once (or reuse a cache), write calib.json.

`calib.json` is both the record of the ranges used (tensor -> min, max, amax, scale, method, sample
count, sha256 of the FP32 ONNX and of the calibration files) and a cache: it carries the statistics
themselves, so a later run with the same ONNX and the same files skips the pass, for any method.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import OnnxArtifact
from ..data import Dataset, Preprocess, open_dataset
from ..errors import UserError
from ..files import sha256_file, write_json_atomic
from ..options import AccuracyTarget, SelectionOptions
from ..progress import Progress
from .methods import CalibrationMethod, CalibrationOptions, TensorRange, tensor_amax
from .statistics import ActivationStatistics, collect_statistics, settings

SCHEMA = "resnet-deploy/calib/v1"
KIND = "calibration"
CALIB_NAME = "calib.json"


def draw_indices(available: int, size: int, seed: int) -> list[int]:
    """`size` of `available` sample indices chosen by `seed`, in file order (all of them when size >= available)."""
    if size >= available:
        return list(range(available))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(available, size=size, replace=False))


@dataclass(frozen=True)
class CalibrationSet:
    """The images drawn for calibration: `size` of them, chosen by `seed`, in file order."""

    dataset: Dataset
    requested: int
    available: int
    seed: int

    @classmethod
    def draw(cls, dataset: Dataset, size: int, seed: int) -> "CalibrationSet":
        return cls(dataset.select(draw_indices(len(dataset), size, seed)), size, len(dataset), seed)

    @cached_property
    def digest(self) -> str:
        return self.dataset.content_digest()

    def overlap(self, other: Dataset) -> int:
        """How many calibration samples are also in `other` (same file, or same .npz row)."""
        return len(set(self.dataset.sample_keys()) & set(other.sample_keys()))

    def describe(self) -> dict[str, Any]:
        return {
            "source": str(self.dataset.source),
            "sha256": self.digest,
            "requested": self.requested,
            "available": self.available,
            "seed": self.seed,
        }


STEADY_SELECTION = 100  # selection images below which one image is a point of top-1 agreement or more


@dataclass(frozen=True)
class SelectionSet:
    """The images that measure layer sensitivity and choose the nodes kept in higher precision.

    Never the images that report the final accuracy (`check_disjoint`): a choice fitted to the reporting
    data would overstate the accuracy it reports.
    """

    dataset: Dataset
    origin: str  # "--select-data" or "held out of --calib-data"
    available: int  # images in the data it was drawn from

    @classmethod
    def split(
        cls, calib: Dataset, options: SelectionOptions, seed: int, preprocess: Preprocess, class_names=None
    ) -> tuple[Dataset, "SelectionSet"]:
        """(the images calibration may draw from, the selection set).

        With --select-data, `options.size` of its images (seeded) and all of --calib-data for calibration;
        without it, `options.size` images (at most half) held out of --calib-data and the rest for calibration.
        """
        if options.data is not None:
            data = open_dataset(options.data, preprocess, option="--select-data", class_names=class_names)
            return calib, cls(data.select(draw_indices(len(data), options.size, seed)), "--select-data", len(data))
        available = len(calib)
        held = draw_indices(available, min(options.size, available // 2), seed)
        if not held:
            raise UserError(
                f"--calib-data {calib.source} has {available} image(s): too few to hold out images that choose the "
                "nodes kept in higher precision; give more images or --select-data"
            )
        kept = sorted(set(range(available)) - set(held))
        return calib.select(kept), cls(calib.select(held), "held out of --calib-data", available)

    def check(self, val: Dataset | None, target: AccuracyTarget | None) -> None:
        """Refuse a selection set that shares images with the reporting data, or lacks the labels the target needs."""
        if val is not None:
            shared = len(set(self.dataset.sample_keys()) & set(val.sample_keys()))
            if shared:
                raise UserError(
                    f"{shared} of the {len(self.dataset)} images that choose the nodes kept in higher precision "
                    f"({self.origin}: {self.dataset.source}) are also in --val-data {val.source}, which reports the "
                    "final accuracy; give --select-data (or --calib-data) disjoint from --val-data"
                )
        if target is not None and target.needs_labels:
            for data, option in [(self.dataset, f"the selection images ({self.origin})"), (val, "--val-data")]:
                if data is not None and not data.has_labels:
                    raise UserError(
                        f"--max-top1-drop compares top-1 with labels, but {option} {data.source} has none (use class "
                        "subfolders or an .npz 'labels' array); or use --min-top1-agreement, which needs no labels"
                    )

    def warning(self) -> str | None:
        """A warning when the selection set is small enough that one image moves the accuracy by a point or more."""
        count = len(self.dataset)
        if count >= STEADY_SELECTION:
            return None
        return (
            f"the nodes kept in higher precision are chosen on {count} images ({self.origin}): one image is "
            f"{100 / count:.1f} points of top-1 agreement; give more with --select-data / --select-size for a steadier choice"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "source": str(self.dataset.source),
            "origin": self.origin,
            "samples": len(self.dataset),
            "available": self.available,
            "labels": self.dataset.has_labels,
            "sha256": self.dataset.content_digest(),
        }


@dataclass(frozen=True)
class Calibration:
    """Statistics of one calibration set on one FP32 ONNX, read through one method."""

    statistics: ActivationStatistics
    method: CalibrationMethod
    percentile: float
    onnx_sha256: str
    data: dict[str, Any]  # CalibrationSet.describe()
    reused: bool = False  # statistics came from --calib-cache: no pass over the images
    seconds: float = 0.0  # wall time of the statistics pass
    notes: tuple[str, ...] = field(default_factory=tuple)
    bounded: frozenset[str] = frozenset()  # outputs of bounded activations (Softmax, Sigmoid, ...): ranged by max

    @property
    def samples(self) -> int:
        return self.statistics.samples

    def with_method(self, method: CalibrationMethod, percentile: float) -> "Calibration":
        return replace(self, method=method, percentile=percentile)

    @cached_property
    def ranges(self) -> dict[str, TensorRange]:
        """Range of every activation tensor: measured ones by the method, the others from their source.

        The output of a bounded activation (Softmax, Sigmoid, ...) has no outliers to clip: it takes its whole
        range (`max`), whatever the method. Entropy would otherwise clip a radix-2 softmax (ResNeSt's split
        attention: every value between about 0.2 and 0.8) at its smallest value, turning the attention into a
        constant (ONNX Runtime's QDQ quantizer fixes a Softmax output to [0, 1] for the same reason).
        """
        measured = {
            name: TensorRange(
                s.minimum,
                s.maximum,
                tensor_amax(
                    s.minimum,
                    s.maximum,
                    s.counts,
                    s.width,
                    CalibrationMethod.MAX if name in self.bounded else self.method,
                    self.percentile,
                ),
            )  # fmt: skip
            for name, s in self.statistics.tensors.items()
        }
        derived = {name: measured[root] for name, root in self.statistics.derived.items() if root in measured}
        return {**measured, **derived}

    def summary(self) -> dict[str, Any]:
        """What a report row and a model's sidecar say about the calibration."""
        return {
            "method": self.method.value,
            "percentile": self.percentile if self.method is CalibrationMethod.PERCENTILE else None,
            "samples": self.samples,
            "onnx_sha256": self.onnx_sha256,
            "data_sha256": self.data.get("sha256"),
            "reused_cache": self.reused,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema": SCHEMA,
            **self.summary(),
            "data": self.data,
            "statistics": {
                **self.statistics.settings,
                "seconds": round(self.seconds, 3),
                "encoding": "npz+base64",
                "npz": base64.b64encode(self.statistics.to_npz_bytes()).decode("ascii"),
            },
            "tensors": {
                name: {**rng.as_dict(), **({"from": self.statistics.derived[name]} if name in self.statistics.derived else {})}
                for name, rng in self.ranges.items()
            },
        }

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.as_json())


def read_cache(path: Path, onnx_sha256: str, data_sha256: str) -> tuple[ActivationStatistics | None, str]:
    """The statistics stored in a calib.json if it was made from the same ONNX and files; else (None, why)."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, ""  # nothing to reuse yet: not worth a note
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"it is not readable JSON ({exc})"
    if not isinstance(meta, dict) or meta.get("kind") != KIND or meta.get("schema") != SCHEMA:
        return None, "it is not a resnet-deploy calib.json"
    if meta.get("onnx_sha256") != onnx_sha256:
        return None, "the FP32 ONNX changed"
    if meta.get("data_sha256") != data_sha256:
        return None, "the calibration images changed"
    stored = meta.get("statistics") or {}
    if {k: stored.get(k) for k in settings()} != settings():
        return None, "it was made with other statistics settings"
    try:
        stats = ActivationStatistics.from_npz_bytes(base64.b64decode(stored["npz"], validate=True), settings())
    except (KeyError, ValueError, OSError) as exc:
        return None, f"its statistics cannot be read ({type(exc).__name__})"
    return stats, ""


def calibrate(
    fp32: OnnxArtifact,
    calibration_set: CalibrationSet,
    options: CalibrationOptions,
    threads: int | None = None,
    progress: Progress = Progress(),
) -> Calibration:
    """Statistics of `calibration_set` on `fp32`: from `options.cache` when it matches, else one pass."""
    onnx_sha256 = sha256_file(fp32.path)
    data = calibration_set.describe()
    notes: list[str] = []
    if options.cache is not None:
        stats, why = read_cache(options.cache, onnx_sha256, data["sha256"])
        if stats is not None:
            progress.log(f"calibration: reusing the statistics in {options.cache} ({stats.samples} images)")
            return Calibration(
                stats, options.method, options.percentile, onnx_sha256, data, reused=True, bounded=bounded_outputs(fp32.path)
            )
        if why:
            notes.append(f"--calib-cache {options.cache} not used: {why}; calibrated again")
            progress.log(notes[-1])
    started = time.perf_counter()
    stats = collect_statistics(fp32.path, fp32.input_name, calibration_set.dataset, threads, progress)
    seconds = time.perf_counter() - started
    data = {**data, "skipped": len(calibration_set.dataset.skipped)}  # unreadable files among those drawn
    progress.log(f"calibration: {stats.samples} images, {len(stats.tensors)} tensors measured in {seconds:.1f} s")
    return Calibration(
        stats, options.method, options.percentile, onnx_sha256, data, False, seconds, tuple(notes), bounded_outputs(fp32.path)
    )


BOUNDED_ACTIVATIONS = frozenset({"Softmax", "Sigmoid", "HardSigmoid", "Tanh"})  # outputs within [0, 1] or [-1, 1]


def bounded_outputs(onnx_path: Path) -> frozenset[str]:
    """Output tensors of the bounded activations of a model (Calibration.ranges takes their whole range)."""
    from .graph import load_onnx

    return frozenset(o for n in load_onnx(onnx_path).graph.node if n.op_type in BOUNDED_ACTIVATIONS for o in n.output)
