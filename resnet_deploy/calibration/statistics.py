"""Activation statistics in ONE pass of ONNX Runtime over the calibration set.

The FP32 graph gets the activation tensors that need an INT8 range as extra outputs; for each batch,
numpy takes their exact minimum and maximum and a strided sample (a prime step, about
`SAMPLES_PER_IMAGE` values per image) that is added to a histogram of |x|. Every calibration method and
both INT8 targets are computed from these statistics afterwards, and FP16's overflow check reads the
same maxima. (Reducing inside the graph instead is slower on the CPU: ONNX Runtime converts its blocked
NCHWc tensors back to NCHW for any consumer that is not a convolution or pooling anyway.)

Tensors whose range follows from another tensor are not measured (tapping them would also stop ONNX
Runtime from fusing Conv+Relu, which costs more than the tap itself):
- the input of a Relu/Clip that is its only consumer takes the range of the Relu/Clip output (ONNX
  Runtime's QDQ quantizer does the same; values below zero become zero anyway);
- the output of an op that only moves values (MaxPool, Reshape, Flatten, Transpose, ...) takes the
  range of its input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..progress import Progress

NUM_BINS = 2048  # histogram bins of |x| set by the first batch (TensorRT's and ModelOpt's default)
MAX_BINS = 16384  # when later batches stretch the range past this, neighbouring bins are merged
SAMPLES_PER_IMAGE = 8192  # values per image and tensor that enter the histogram
BATCH_SIZE = 8
STATISTICS_VERSION = 1

RANGE_PRESERVING = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
CLIPPING = frozenset({"Relu", "Clip"})
NONNEGATIVE = frozenset({"Relu"})  # outputs never below 0: only the maximum is computed


def settings() -> dict[str, int]:
    """What the statistics depend on besides the model and the images (part of the cache key)."""
    return {
        "version": STATISTICS_VERSION,
        "bins": NUM_BINS,
        "max_bins": MAX_BINS,
        "samples_per_image": SAMPLES_PER_IMAGE,
        "batch_size": BATCH_SIZE,
    }


# ------------------------------------------------------------------------------------------- the plan


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def sample_stride(dims: tuple[int, ...] | None) -> int:
    """Prime step for sampling a tensor with per-image shape `dims`; 1 (every value) for small tensors.

    The step shares no factor with any dimension, so the samples visit every channel and position.
    """
    if not dims or any(d <= 0 for d in dims):
        return 1
    elements = int(np.prod(dims))
    target = elements // SAMPLES_PER_IMAGE
    if target < 2:
        return 1
    step = target
    while not (_is_prime(step) and all(d % step for d in dims)):
        step += 1
    return step


@dataclass(frozen=True)
class StatisticsPlan:
    """Which tensors of a graph are measured (each with its sample stride) and which take another's range."""

    measured: dict[str, int]  # tensor -> sample stride for its histogram
    nonnegative: frozenset[str]  # measured outputs of a Relu: min is 0, only the max is computed
    derived: dict[str, str]  # tensor -> the measured tensor whose range it takes
    inputs: frozenset[str]  # measured tensors that are graph inputs (taken from the feed)

    @classmethod
    def of(cls, model) -> "StatisticsPlan":
        """The plan for a model after ONNX shape inference (shapes give the sample strides)."""
        import onnx

        graph = model.graph
        initializers = {i.name for i in graph.initializer}
        shapes: dict[str, tuple[int, ...] | None] = {}
        floats: set[str] = set()
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tensor_type is None or vi.name in initializers:
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
            shapes[vi.name] = dims[1:] if dims else None
            if tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                floats.add(vi.name)
        producer = {out: node for node in graph.node for out in node.output}
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}

        def step(name: str) -> str | None:
            """The tensor whose range `name` takes, or None when it needs its own."""
            node = producer.get(name)
            if node is not None and node.op_type in RANGE_PRESERVING and node.input and node.input[0] in floats:
                return node.input[0]
            users = consumers.get(name, [])
            if len(users) == 1 and users[0].op_type in CLIPPING and name not in outputs and users[0].output[0] in floats:
                return users[0].output[0]
            return None

        measured: dict[str, int] = {}
        derived: dict[str, str] = {}
        for name in _activation_order(graph):
            if name not in floats:
                continue
            root, seen = name, {name}
            while (nxt := step(root)) is not None and nxt not in seen:
                seen.add(nxt)
                root = nxt
            if root != name:
                derived[name] = root
            else:
                measured[name] = sample_stride(shapes.get(name))
        nonnegative = frozenset(n for n in measured if (p := producer.get(n)) is not None and p.op_type in NONNEGATIVE)
        inputs = frozenset(n for n in measured if n in {i.name for i in graph.input})
        return cls(measured, nonnegative, derived, inputs)


def _activation_order(graph) -> list[str]:
    """Graph inputs, then node outputs in node order, each name once."""
    seen: dict[str, None] = {}
    for vi in graph.input:
        seen.setdefault(vi.name, None)
    for node in graph.node:
        for name in node.output:
            if name:
                seen.setdefault(name, None)
    return list(seen)


def augment(model, plan: StatisticsPlan):
    """`model` (changed in place) with the measured tensors as its outputs (graph inputs come from the feed)."""
    from onnx import helper

    graph = model.graph
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.output]}
    del graph.output[:]
    graph.output.extend(
        helper.make_tensor_value_info(name, elem_types[name], None) for name in plan.measured if name not in plan.inputs
    )
    return model


# ------------------------------------------------------------------------------------- accumulation


@dataclass
class TensorStatistics:
    """Exact min/max of a tensor over the calibration set; histogram of |x| (bins of `width` from 0)."""

    minimum: float = float("inf")
    maximum: float = float("-inf")
    counts: np.ndarray | None = None
    width: float = 0.0
    zeros: int = 0  # samples seen while the tensor was all zeros (no histogram range yet)

    @property
    def amax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    def add_range(self, minimum: float, maximum: float) -> None:
        self.minimum = min(self.minimum, minimum)
        self.maximum = max(self.maximum, maximum)

    def add_sample(self, sample: np.ndarray, batch_amax: float) -> None:
        """Add |sample| to the histogram whose range grows (same bin width) to cover `batch_amax`."""
        np.abs(sample, out=sample)
        if self.counts is None:
            if batch_amax <= 0:
                self.zeros += sample.size
                return
            self.width = batch_amax / NUM_BINS
            self.counts = np.zeros(NUM_BINS, dtype=np.int64)
            self.counts[0] += self.zeros
        needed = int(batch_amax / self.width) + 1
        while needed > MAX_BINS:  # merge neighbouring bins: half as many, twice as wide
            if len(self.counts) % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            needed = int(batch_amax / self.width) + 1
        if needed > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(needed - len(self.counts), dtype=np.int64)])
        bins = np.multiply(sample, np.float32(1.0 / self.width)).astype(np.intp)  # floor(|x| / width)
        np.minimum(bins, len(self.counts) - 1, out=bins)
        self.counts += np.bincount(bins, minlength=len(self.counts))


@dataclass
class ActivationStatistics:
    """Everything one pass over the calibration set measured."""

    tensors: dict[str, TensorStatistics]
    derived: dict[str, str]
    samples: int  # images
    settings: dict[str, int] = field(default_factory=settings)

    def root(self, name: str) -> str:
        return self.derived.get(name, name)

    def absmax(self, name: str) -> float | None:
        """Largest |x| of a tensor (measured, or of the tensor it takes its range from); None if unknown."""
        stats = self.tensors.get(name) or self.tensors.get(self.root(name))
        return None if stats is None else stats.amax

    # ------------------------------------------------------------------------- (de)serialisation

    def to_npz_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        names = list(self.tensors)
        arrays["names"] = np.array(names, dtype=np.str_)
        arrays["minmax"] = np.array([[t.minimum, t.maximum] for t in self.tensors.values()], dtype=np.float64).reshape(-1, 2)
        arrays["widths"] = np.array([t.width for t in self.tensors.values()], dtype=np.float64)
        arrays["zeros"] = np.array([t.zeros for t in self.tensors.values()], dtype=np.int64)
        for k, stats in enumerate(self.tensors.values()):
            if stats.counts is not None:
                arrays[f"counts_{k}"] = stats.counts
        arrays["derived"] = np.array([[k, v] for k, v in self.derived.items()], dtype=np.str_).reshape(-1, 2)
        arrays["samples"] = np.array(self.samples, dtype=np.int64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes, stats_settings: dict[str, int]) -> "ActivationStatistics":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            tensors = {}
            for k, name in enumerate(npz["names"].tolist()):
                counts = npz[f"counts_{k}"].astype(np.int64) if f"counts_{k}" in npz.files else None
                lo, hi = npz["minmax"][k]
                tensors[name] = TensorStatistics(float(lo), float(hi), counts, float(npz["widths"][k]), int(npz["zeros"][k]))
            derived = {str(a): str(b) for a, b in npz["derived"].tolist()}
            return cls(tensors, derived, int(npz["samples"]), dict(stats_settings))


def collect_statistics(
    model_path,
    input_name: str,
    dataset: Dataset,
    threads: int | None = None,
    progress: Progress = Progress(),
) -> ActivationStatistics:
    """Run the FP32 graph once over `dataset` with the measured tensors as outputs; accumulate statistics."""
    import onnx
    import onnxruntime as ort

    from ..errors import CheckFailed

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    plan = StatisticsPlan.of(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        augment(model, plan).SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    tensors = {name: TensorStatistics() for name in plan.measured}
    samples = 0
    total = -(-len(dataset) // BATCH_SIZE)
    for index, batch in enumerate(progress.track(dataset.iter_batches(BATCH_SIZE), total=total, description="calibration")):
        values = dict(zip(names, session.run(names, {input_name: batch.images})))
        values.update({name: batch.images for name in plan.inputs})
        samples += len(batch.images)
        for name, stride in plan.measured.items():
            value = values[name]
            high = float(value.max())
            low = min(0.0, high) if name in plan.nonnegative else float(value.min())
            if not (np.isfinite(low) and np.isfinite(high)):
                raise CheckFailed(
                    f"calibration: tensor {name!r} of the FP32 model is NaN/Inf on the calibration images; "
                    "the FP32 model itself overflows, so it cannot be converted"
                )
            stats = tensors[name]
            stats.add_range(low, high)
            flat = value.reshape(-1)
            stats.add_sample(np.array(flat[index % stride :: stride], dtype=np.float32), max(abs(low), abs(high)))
    return ActivationStatistics(tensors, dict(plan.derived), samples)
