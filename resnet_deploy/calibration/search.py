"""Accuracy-aware INT8: leave the most sensitive nodes in higher precision until an accuracy target is met.

The fully quantized model is measured on the selection images (never the reporting ones); if it misses
the target, its quantized nodes are ranked by the SQNR each adds (sensitivity.node_errors, one pass) and
the search, every step a real quantization with the same calibration ranges (no new statistics pass)
measured on the selection images:

1. greedy: the 1, 2, 4, 8, ... most sensitive nodes (up to --max-excluded) until a set meets the target;
2. bisect: the shortest prefix of the ranking between the last failing and the first passing size;
3. prune: each node of that set, least sensitive first, is dropped when the target holds without it.

Higher precision is FP32 for the onnxruntime target; for the tensorrt target the model TensorRT builds
has FP16 there (ModelOpt's high_precision_dtype='fp16'), and the search measures its FP32-elsewhere twin
with the same Q/DQ (ONNX Runtime's CPU EP cannot run FP16 Q/DQ graphs exactly).

When no set of at most --max-excluded nodes meets the target, the best model found (the least points
short of it, then the fewest nodes) is the result, marked as missing the target.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines.accuracy import Accuracy
from ..options import AccuracyTarget, Target
from ..progress import Progress
from .calibrate import SelectionSet
from .graph import load_onnx, quantized_nodes
from .quantize import Int8Recipe
from .sensitivity import CandidateEvaluator, node_errors, ranked_by_sqnr, sensitivity_rows


@dataclass(frozen=True)
class Step:
    phase: str  # "all-int8", "greedy", "bisect" or "prune"
    excluded: tuple[str, ...]  # nodes the search left in higher precision (--exclude-layers ones not listed)
    accuracy: Accuracy
    met: bool
    shortfall: float  # points short of the target (0 when met)

    def as_dict(self) -> dict[str, Any]:
        a = self.accuracy
        return {
            "phase": self.phase,
            "excluded": list(self.excluded),
            "top1_agreement": a.top1_agreement,
            "top1": a.top1,
            "top1_drop_points": a.top1_drop_points,
            "mean_abs_diff": a.mean_abs_diff,
            "met": self.met,
            "shortfall_points": round(self.shortfall, 4),
        }


@dataclass(frozen=True)
class SearchOutcome:
    steps: list[Step]
    greedy: tuple[str, ...] | None  # the first greedy set that met the target (None: none did)
    chosen: Step  # the smallest set found that meets the target, else the best effort

    @property
    def met(self) -> bool:
        return self.chosen.met


def search_exclusions(
    ranked: Sequence[str], measure: Callable[[tuple[str, ...]], Accuracy], target: AccuracyTarget
) -> SearchOutcome:
    """Greedy by rank, then bisect, then prune (module doc); `measure(nodes)` is called once per distinct set."""
    steps: list[Step] = []
    seen: dict[frozenset[str], Step] = {}

    def step(phase: str, nodes: Sequence[str]) -> Step:
        key = frozenset(nodes)
        if key not in seen:
            accuracy = measure(tuple(nodes))
            shortfall = target.shortfall(accuracy)
            seen[key] = Step(phase, tuple(nodes), accuracy, shortfall == 0.0, shortfall)
            steps.append(seen[key])
        return seen[key]

    if step("all-int8", ()).met:
        return SearchOutcome(steps, (), steps[0])
    cap = min(target.max_excluded, len(ranked))
    failing, passing, size = 0, None, 1
    while passing is None and failing < cap:
        size = min(size, cap)
        if step("greedy", ranked[:size]).met:
            passing = size
        else:
            failing, size = size, size * 2
    if passing is None:
        best = min(steps, key=lambda s: (s.shortfall, len(s.excluded), -s.accuracy.top1_agreement))
        return SearchOutcome(steps, None, best)
    greedy = tuple(ranked[:passing])
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if step("bisect", ranked[:middle]).met:
            passing = middle
        else:
            failing = middle
    chosen = list(ranked[:passing])
    for node in reversed(ranked[:passing]):  # least sensitive first
        if len(chosen) > 1 and step("prune", [n for n in chosen if n != node]).met:
            chosen.remove(node)
    return SearchOutcome(steps, greedy, seen[frozenset(chosen)])


@dataclass
class MixedPrecision:
    """The search for one INT8 target: what it measured, what it chose, and the files of its models."""

    target_kind: Target
    target: AccuracyTarget
    selection: dict[str, Any]
    ranking: list[dict[str, Any]]  # every quantized node of the fully quantized model, worst SQNR first
    outcome: SearchOutcome
    fixed: list[str]  # --exclude-layers nodes (in higher precision in every step)
    baseline_files: dict[str, Path]  # the fully quantized model (latency before)
    chosen_files: dict[str, Path]
    seconds: float
    recipe: Int8Recipe  # this model, calibration and target: how each candidate was made
    latency_cost: list[dict[str, Any]] = field(default_factory=list)  # filled in once the engine is built
    measured_exactly: bool = False  # candidates judged by their exact Q/DQ semantics, not by ONNX Runtime as it runs here

    def quantize(self, excluded: Sequence[str], folder: Path, fp16: bool = False) -> dict[str, Path]:
        """The model with `excluded` in higher precision (the same ranges), e.g. with its FP16-elsewhere twin."""
        return self.recipe.make(list(excluded), folder, fp16)

    def baseline_twin(self, folder: Path) -> Path:
        """The fully quantized model with FP16 elsewhere: what TensorRT would have built without the search."""
        return self.quantize(self.fixed, folder, fp16=True)["fp16"]

    @property
    def met(self) -> bool:
        return self.outcome.met

    @property
    def excluded(self) -> list[str]:
        return list(self.outcome.chosen.excluded)

    @property
    def high_precision(self) -> str:
        return "fp16 (TensorRT engine; validated on its fp32 twin)" if self.target_kind is Target.TENSORRT else "fp32"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.as_dict(),
            "status": "met" if self.met else "target missed (best effort)",
            "met": self.met,
            "excluded": self.excluded,
            "greedy_excluded": None if self.outcome.greedy is None else list(self.outcome.greedy),
            "high_precision": self.high_precision,
            "selection": self.selection,
            "steps": [s.as_dict() for s in self.outcome.steps],
            "sensitivity": self.ranking,
            "seconds": round(self.seconds, 2),
            "measured_on": "exact Q/DQ semantics (ONNX Runtime, graph optimizations off)"
            if self.measured_exactly
            else "ONNX Runtime's CPU EP as it runs here",
            "latency_cost": self.latency_cost,
        }


def mixed_precision_int8(
    recipe: Int8Recipe,
    target: AccuracyTarget,
    selection_set: SelectionSet,
    folder: Path,
    fixed: Sequence[str] = (),
    threads: int | None = None,
    progress: Progress = Progress(),
    fp16_twin: bool = False,
) -> MixedPrecision:
    """Run the search for `recipe`'s target on the selection images; candidate models are written under `folder`
    (the caller's). With `fp16_twin` (tensorrt target), the chosen set is also made with FP16 elsewhere
    (`chosen_files["fp16"]`)."""
    selection_info = selection_set.describe()
    started = time.perf_counter()
    fp32, target_kind, selection = recipe.fp32, recipe.target, selection_set.dataset
    evaluator = CandidateEvaluator(
        fp32, recipe.calibration, target_kind, selection, recipe.example, folder, fixed, threads, progress, recipe.cpu
    )
    with evaluator:
        baseline = evaluator.evaluate(())
        ranking: list[dict[str, Any]] = []
        ranked: list[str] = []
        if not target.met(baseline.accuracy):
            errors = node_errors(
                fp32.path, baseline.files["fp32"], fp32.input_name, selection, threads=threads, progress=progress
            )
            candidates = quantized_nodes(load_onnx(baseline.files["fp32"]))
            ranked = ranked_by_sqnr(errors, candidates)
            rows = {row.node: row for row in sensitivity_rows(fp32.path, baseline.files["fp32"], errors)}
            ranking = [
                {k: v for k, v in rows[n].as_dict().items() if k in ("node", "op_type", "module", "sqnr_db")} for n in ranked
            ]
            progress.log(
                f"INT8 ({target_kind}): {baseline.accuracy.top1_agreement * 100:.2f}% top-1 agreement on the selection "
                f"images misses {target.describe()}; searching among {len(ranked)} nodes (most sensitive: "
                f"{', '.join(ranked[:3])})"
            )

        def measure(nodes: tuple[str, ...]) -> Accuracy:
            evaluation = evaluator.evaluate(nodes)
            progress.log(
                f"  {len(nodes)} node(s) in higher precision: top-1 agreement {evaluation.accuracy.top1_agreement * 100:.2f}%"
                + ("" if evaluation.accuracy.top1_drop_points is None else f", drop {evaluation.accuracy.top1_drop_points:+.2f}")
            )
            return evaluation.accuracy

        outcome = search_exclusions(ranked, measure, target)
        chosen = evaluator.evaluations[frozenset(outcome.chosen.excluded)].files
        if fp16_twin:  # the same Q/DQ with FP16 elsewhere (also in the nodes left out): what TensorRT builds
            excluded = [*fixed, *outcome.chosen.excluded]
            chosen = recipe.make(excluded, folder / "chosen", True, evaluator.session)
    return MixedPrecision(
        target_kind, target, selection_info, ranking, outcome, list(fixed), baseline.files, chosen,
        time.perf_counter() - started, recipe, measured_exactly=evaluator.exact,
    )  # fmt: skip


def best_effort_path(path: Path) -> Path:
    """model.int8-onnxruntime.onnx -> model.int8-onnxruntime.best-effort.onnx (the target was missed)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.best-effort{path.suffix}")


def target_on(target: AccuracyTarget, accuracy: Accuracy | None, data: str) -> dict[str, Any] | None:
    """The target checked again on the reporting data (--val-data): the record for a report row."""
    if accuracy is None:
        return None
    shortfall = target.shortfall(accuracy)
    return {
        "data": data,
        "met": shortfall == 0.0,
        "top1_agreement": accuracy.top1_agreement,
        "top1_drop_points": accuracy.top1_drop_points,
        "shortfall_points": None if math.isinf(shortfall) else round(shortfall, 4),
    }
