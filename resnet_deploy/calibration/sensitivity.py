"""How much error each quantized node adds, and what leaving one node unquantized buys.

Two measurements per quantized node of an INT8 Q/DQ model, both against the FP32 model it came from:

- **SQNR** (dB) of the node's output, the node fed the FP32 model's own values: the error this node adds
  by itself (its input and weight quantization and its arithmetic; for a node whose output is quantized,
  as ONNX Runtime's recipe does, that Q/DQ too), not the error that reached it from upstream. The INT8
  graph is cut at every activation QuantizeLinear, which reads the FP32 model's value of its tensor instead
  of the upstream INT8 result (a second Q/DQ pair feeds the consumers; the original pair stays, to measure
  the producer's quantized output). ONNX Runtime's `qdq_loss_debug` does the collection: its
  `modify_model_output_intermediate_tensors` + `collect_activations` on both models (graph optimizations
  off: Q/DQ simulated in FP32), `create_activation_matching` pairs each quantized tensor with its
  dequantized value, and `compute_activation_error` accumulates squared norms batch by batch (memory stays
  bounded), so SQNR = 20 log10(||x|| / ||x - y||) over all the images, as its own SQNR function computes it.
- **Leave one out**: the model quantized again with only this node left in higher precision (same
  calibration ranges, no new statistics pass), its top-1 agreement with the FP32 model on the selection
  images against the fully quantized model's: the points of agreement quantizing this node costs.
  Labels come from the FP32 model, so unlabelled images work.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import OnnxArtifact
from ..data import Dataset
from ..engines.accuracy import Accuracy, ReferenceOutputs, validate
from ..engines.ort import OrtRunner
from ..files import sha256_file
from ..isa import CpuKind
from ..options import Target
from ..progress import Progress
from .calibrate import Calibration
from .graph import load_onnx, module_path, quantized_nodes
from .quantize import ModelOptSession, judged_exactly, make_int8

SQNR_IMAGES = 64  # images of the selection set the SQNR pass runs on (every intermediate tensor is kept per batch)
SQNR_BATCH = 4
CUT_SUFFIX = "__fp32_cut"  # names the cut graph adds; never a qdq_loss_debug suffix

# ------------------------------------------------------------------------------------------- SQNR


@dataclass(frozen=True)
class NodeError:
    """The SQNR of one node's output, and which tensors were compared."""

    sqnr_db: float
    fp32_tensor: str  # in the FP32 model
    int8_tensor: str  # in the INT8 model: the dequantized output when the output is quantized, else the output


def _augmented(model_path: Path, folder: Path, name: str) -> Path:
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    out = folder / name
    modify_model_output_intermediate_tensors(str(model_path), str(out))
    return out


def cut_graph(int8_model, fp32_shapes: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """`int8_model` (changed in place) with each activation QuantizeLinear's consumers fed from a new graph
    input carrying the FP32 model's value of that tensor; returns it and {tensor: new input name}.

    The original Q/DQ pair stays on the INT8 producer's output (nothing reads it any more but the
    measurement). Tensors that are graph inputs already match, and tensors without a static per-image
    shape in the FP32 model are left uncut.
    """
    from onnx import helper

    graph = int8_model.graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    cuts: dict[str, str] = {}
    added = []
    for q in list(graph.node):
        tensor = q.input[0] if q.op_type == "QuantizeLinear" else None
        if tensor is None or tensor in initializers or tensor in graph_inputs or tensor not in fp32_shapes:
            continue
        feed = cuts.setdefault(tensor, tensor + CUT_SUFFIX)
        q_cut = helper.make_node(
            "QuantizeLinear", [feed, *q.input[1:]], [q.output[0] + CUT_SUFFIX], name=q.name + CUT_SUFFIX, domain=q.domain
        )
        q_cut.attribute.extend(q.attribute)
        added.append(q_cut)
        for dq in [n for n in consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]:
            dq_cut = helper.make_node(
                "DequantizeLinear",
                [q_cut.output[0], *dq.input[1:]],
                [dq.output[0] + CUT_SUFFIX],
                name=dq.name + CUT_SUFFIX,
                domain=dq.domain,
            )
            dq_cut.attribute.extend(dq.attribute)
            added.append(dq_cut)
            for user in consumers.get(dq.output[0], []):
                user.input[:] = [dq_cut.output[0] if name == dq.output[0] else name for name in user.input]
    order = [*added, *graph.node]  # every new node reads a graph input or another new node: first
    del graph.node[:]
    graph.node.extend(order)
    for tensor, feed in cuts.items():
        graph.input.append(helper.make_tensor_value_info(feed, fp32_shapes[tensor][0], ["batch", *fp32_shapes[tensor][1]]))
    return int8_model, cuts


def _static_shapes(model) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Tensor -> (element type, per-image dims) for tensors whose dims after the batch are all known."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
        if len(dims) >= 2 and all(dims[1:]):
            shapes[vi.name] = (tensor_type.elem_type, tuple(dims[1:]))
    return shapes


def _sum_squares(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """Squared norm of x (for `compute_activation_error`'s err_func: accumulates the signal)."""
    return float(sum(np.square(a, dtype=np.float64).sum() for a in x))


def _sum_squared_error(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """Squared norm of x - y (accumulates the noise)."""
    return float(sum(np.square(a.astype(np.float64) - b, dtype=np.float64).sum() for a, b in zip(x, y)))


def sqnr_db(signal: float, noise: float) -> float:
    """20 log10(||x|| / ||x - y||) from the squared norms, norms floored at float eps like qdq_loss_debug does;
    +inf when the node adds no error at all (e.g. a folded conv whose weights are all zero: both norms 0)."""
    if noise == 0.0:
        return math.inf
    eps = float(np.finfo(float).eps)
    return 20.0 * math.log10(max(math.sqrt(signal), eps) / max(math.sqrt(noise), eps))


def node_errors(
    fp32_path: Path,
    int8_path: Path,
    input_name: str,
    dataset: Dataset,
    images: int = SQNR_IMAGES,
    threads: int | None = None,
    progress: Progress = Progress(),
) -> dict[str, NodeError]:
    """SQNR of every quantized node's output against the FP32 model, the node fed FP32 values (see module doc)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, compute_activation_error, create_activation_matching

    shapes = _static_shapes(onnx.load(str(fp32_path)))
    int8_model = onnx.load(str(int8_path))
    # what each quantized node writes, and whether that is quantized (then compare its dequantized value)
    quantized_tensors = {n.input[0] for n in int8_model.graph.node if n.op_type == "QuantizeLinear"}
    wanted = set(quantized_nodes(int8_model))
    outputs = {n.name: n.output[0] for n in int8_model.graph.node if n.name in wanted}
    raw_outputs = set(outputs.values()) - quantized_tensors
    cut, cuts = cut_graph(int8_model, shapes)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # qdq_loss_debug's own default
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    measured = dataset.select(range(min(images, len(dataset))))
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-sqnr-") as tmp:
        onnx.save(cut, str(Path(tmp) / "cut.onnx"))
        fp32_augmented = _augmented(Path(fp32_path), Path(tmp), "fp32.augmented.onnx")
        cut_augmented = _augmented(Path(tmp) / "cut.onnx", Path(tmp), "cut.augmented.onnx")
        total = -(-len(measured) // SQNR_BATCH)
        for batch in progress.track(measured.iter_batches(SQNR_BATCH), total=total, description="SQNR per node"):
            n = len(batch.images)
            fp32 = collect_activations(str(fp32_augmented), [{input_name: batch.images}], options)
            feed = {input_name: batch.images}
            feed.update({name: fp32[tensor][0].reshape(n, *shapes[tensor][1]) for tensor, name in cuts.items()})
            int8 = collect_activations(str(cut_augmented), [feed], options)
            matching = create_activation_matching(int8, fp32)  # quantized tensor -> pre_qdq, post_qdq, float
            dequantized = {t: m for t, m in matching.items() if "float" in m}
            # xmodel_err = err_func(float, post_qdq): with these two functions, ||float||^2 and ||float - post_qdq||^2
            for tensor, values in compute_activation_error(dequantized, _sum_squares).items():
                signal[tensor] = signal.get(tensor, 0.0) + values["xmodel_err"]
            for tensor, values in compute_activation_error(dequantized, _sum_squared_error).items():
                noise[tensor] = noise.get(tensor, 0.0) + values["xmodel_err"]
            for tensor in raw_outputs & fp32.keys() & int8.keys():  # outputs without Q/DQ: compared as they are
                signal[tensor] = signal.get(tensor, 0.0) + _sum_squares(fp32[tensor], int8[tensor])
                noise[tensor] = noise.get(tensor, 0.0) + _sum_squared_error(fp32[tensor], int8[tensor])
    errors = {}
    for node, tensor in outputs.items():
        if tensor in signal:
            compared = f"{tensor}_DequantizeLinear_Output" if tensor in quantized_tensors else tensor
            errors[node] = NodeError(sqnr_db(signal[tensor], noise[tensor]), tensor, compared)
    return errors


# ------------------------------------------------------------------------------- leave one out


@dataclass(frozen=True)
class Evaluation:
    """One candidate: the nodes left in higher precision (besides --exclude-layers) and its accuracy."""

    excluded: tuple[str, ...]
    accuracy: Accuracy
    files: dict[str, Path] | None  # the quantized model(s), while the evaluator keeps them
    seconds: float


class CandidateEvaluator:
    """Quantizes candidate exclusion sets with one Calibration (its ranges as they are: no statistics pass)
    and measures each on the selection images against the FP32 model. Evaluations are cached by set.

    A context manager: the FP32 model's outputs on the selection set are computed once on entry; the
    ModelOpt worker process (tensorrt target) lives as long as the evaluator. Candidates are measured on
    ONNX Runtime as it runs here, or under their exact semantics where that is what the model is judged by
    (`quantize.judged_exactly`: the tensorrt target; an onnxruntime-target model made for another kind of CPU).
    """

    def __init__(
        self,
        fp32: OnnxArtifact,
        calibration: Calibration,
        target: Target,
        selection: Dataset,
        example: np.ndarray,
        folder: Path,
        fixed: Sequence[str] = (),
        threads: int | None = None,
        progress: Progress = Progress(),
        cpu: CpuKind | None = None,
    ) -> None:
        self.fp32, self.calibration, self.target, self.selection = fp32, calibration, target, selection
        self.cpu, self.exact = cpu, judged_exactly(target, cpu)
        self.example, self.folder, self.fixed, self.threads, self.progress = example, Path(folder), list(fixed), threads, progress
        self.evaluations: dict[frozenset[str], Evaluation] = {}
        self._reference: ReferenceOutputs | None = None
        self._session: ModelOptSession | None = None
        self._count = 0

    def __enter__(self) -> "CandidateEvaluator":
        with OrtRunner(self.fp32.path, "fp32", "fp32", threads=self.threads) as runner:
            self._reference = ReferenceOutputs.compute(runner, self.selection, self.fp32.num_classes, progress=self.progress)
        if self.target is Target.TENSORRT:
            self._session = ModelOptSession().__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._session is not None:
            self._session.__exit__(*exc_info)
            self._session = None
        if self._reference is not None:
            self._reference.close()
            self._reference = None

    @property
    def session(self) -> ModelOptSession | None:
        return self._session

    def evaluate(self, excluded: Sequence[str], keep: bool = True) -> Evaluation:
        """The model with `excluded` (+ the fixed exclusions) in higher precision, measured; files kept if `keep`."""
        key = frozenset(excluded)
        if key in self.evaluations:
            return self.evaluations[key]
        started = time.perf_counter()
        self._count += 1
        folder = self.folder / f"candidate-{self._count:03d}"
        files = make_int8(
            self.fp32, self.calibration, self.target, [*self.fixed, *excluded], self.example, folder, session=self._session,
            cpu=self.cpu,
        )  # fmt: skip
        name = f"int8-{self.target}-candidate"
        runner = OrtRunner(files["fp32"], name, "int8", self.target.value, threads=self.threads, exact=self.exact)
        with runner:
            accuracy = validate(runner, self.selection, self._reference)
        if not keep:
            for path in files.values():
                path.unlink(missing_ok=True)
        evaluation = Evaluation(tuple(excluded), accuracy, files if keep else None, time.perf_counter() - started)
        self.evaluations[key] = evaluation
        return evaluation


# ----------------------------------------------------------------------------------- the table


@dataclass
class LayerSensitivity:
    node: str
    op_type: str
    module: str | None
    sqnr_db: float | None
    top1_agreement_unquantized: float | None = None  # selection images, only this node left in higher precision
    top1_agreement_drop_points: float | None = None  # agreement with the node left unquantized - fully quantized
    mean_abs_diff_unquantized: float | None = None  # logit error of that model (ties: lower is better)
    fp32_tensor: str | None = None
    int8_tensor: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: floats rounded; an SQNR of +inf (no error) as None."""
        return {k: (round(v, 4) if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def sort_worst_first(rows: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """Largest agreement drop first; then the lowest SQNR (unmeasured last)."""
    return sorted(
        rows,
        key=lambda r: (
            -(r.top1_agreement_drop_points or 0.0),
            math.inf if r.sqnr_db is None else r.sqnr_db,
            r.node,
        ),
    )


def ranked_by_sqnr(errors: dict[str, NodeError], candidates: Sequence[str]) -> list[str]:
    """Candidates by SQNR, lowest (worst) first; unmeasured nodes last, in graph order."""
    order = {name: i for i, name in enumerate(candidates)}
    return sorted(candidates, key=lambda n: (errors[n].sqnr_db if n in errors else math.inf, order[n]))


def sensitivity_rows(fp32_path: Path, int8_path: Path, errors: dict[str, NodeError]) -> list[LayerSensitivity]:
    """One row per quantized node of the INT8 model, in graph order, with its SQNR."""
    model = load_onnx(int8_path)
    fp32_nodes = {n.name: n for n in load_onnx(fp32_path).graph.node}
    by_name = {n.name: n for n in model.graph.node}
    rows = []
    for name in quantized_nodes(model):
        error = errors.get(name)
        source = fp32_nodes.get(name)
        rows.append(
            LayerSensitivity(
                node=name,
                op_type=by_name[name].op_type,
                module=module_path(source) if source is not None else None,
                sqnr_db=None if error is None else error.sqnr_db,
                fp32_tensor=None if error is None else error.fp32_tensor,
                int8_tensor=None if error is None else error.int8_tensor,
            )
        )
    return rows


@dataclass
class LayersReport:
    """`resnet-deploy layers`: the per-node table and how it was measured (layers.json)."""

    fp32: OnnxArtifact
    target: Target
    calibration: Calibration
    selection: dict[str, Any]
    fixed: list[str]
    baseline: Accuracy
    rows: list[LayerSensitivity]
    sqnr_images: int
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": "resnet-deploy/layers/v1",
            "model": {"path": str(self.fp32.path), "arch": self.fp32.arch, "sha256": sha256_file(self.fp32.path)},
            "target": self.target.value,
            "calibration": self.calibration.summary(),
            "selection": self.selection,
            "sqnr_images": self.sqnr_images,
            "excluded_by_user": self.fixed,
            "fully_quantized": {
                "top1_agreement": self.baseline.top1_agreement,
                "top1": self.baseline.top1,
                "top1_drop_points": self.baseline.top1_drop_points,
                "mean_abs_diff": self.baseline.mean_abs_diff,
            },
            "definitions": {
                "sqnr_db": "SQNR of the node's output against the FP32 model, the node fed the FP32 model's values",
                "top1_agreement_drop_points": "top-1 agreement with the FP32 model with only this node left in higher "
                "precision, minus the fully quantized model's, in points (the agreement quantizing it costs)",
            },
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "nodes": [row.as_dict() for row in self.rows],
        }


def measure_layers(
    fp32: OnnxArtifact,
    calibration: Calibration,
    target: Target,
    selection: Dataset,
    selection_info: dict[str, Any],
    example: np.ndarray,
    fixed: Sequence[str] = (),
    threads: int | None = None,
    progress: Progress = Progress(),
    sqnr_images: int = SQNR_IMAGES,
    cpu: CpuKind | None = None,
) -> LayersReport:
    """Quantize (ranges of `calibration`), then SQNR and leave-one-out agreement for every quantized node."""
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-layers-") as tmp:
        evaluator = CandidateEvaluator(fp32, calibration, target, selection, example, Path(tmp), fixed, threads, progress, cpu)
        with evaluator:
            started = time.perf_counter()
            baseline = evaluator.evaluate(())
            errors = node_errors(fp32.path, baseline.files["fp32"], fp32.input_name, selection, sqnr_images, threads, progress)
            rows = sensitivity_rows(fp32.path, baseline.files["fp32"], errors)
            seconds["quantize + sqnr"] = time.perf_counter() - started
            started = time.perf_counter()
            for row in progress.track(rows, total=len(rows), description="leave one out"):
                unquantized = evaluator.evaluate((row.node,), keep=False).accuracy
                row.top1_agreement_unquantized = unquantized.top1_agreement
                row.top1_agreement_drop_points = (unquantized.top1_agreement - baseline.accuracy.top1_agreement) * 100.0
                row.mean_abs_diff_unquantized = unquantized.mean_abs_diff
            seconds["leave one out"] = time.perf_counter() - started
    return LayersReport(
        fp32, target, calibration, selection_info, list(fixed), baseline.accuracy, sort_worst_first(rows),
        min(sqnr_images, len(selection)), seconds,
    )  # fmt: skip
