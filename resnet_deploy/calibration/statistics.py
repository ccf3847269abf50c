"""Activation statistics in ONE pass of ONNX Runtime over the calibration set.

For each tensor that needs an INT8 range, the FP32 graph gets a few nodes that ONNX Runtime runs with the
model, in its thread pool: the tensor's maximum (and minimum, unless a Relu made it) per image, and a sample
of about `SAMPLES_PER_IMAGE` values per image. Only those small results leave the session; numpy adds each
sample to a histogram of |x| (bins fixed by the first batch). Every calibration method and both INT8
targets are computed from these statistics afterwards, and FP16's overflow check reads the same maxima.

The nodes are chosen so that ONNX Runtime can keep running the model in its blocked NCHWc layout: an
activation (N, C, H, W) gets its maximum from a GlobalMaxPool and its sample from a MaxPool with a 1x1 kernel
and a stride (`Sampling.grid`: every g-th row and column of every channel, the same positions in every
image), both of which ONNX Runtime runs on NCHWc; only their small results are reordered back to NCHW.
A ReduceMax or Slice on the activation itself would need the whole tensor reordered first. Minima (of the
tensors a Relu does not bound) still take that reorder: there is no NCHWc op for them. Other tensors (the
graph input, rank-2 logits, ...) are sampled flat: every `Sampling.flat`-th value of the image in NCHW
order, a prime step starting at the batch index. (The first version returned every measured tensor whole
and reduced it in numpy on one core: on ResNet-50 about 70 tensors, 530 MB per batch of 8, held at once;
the second sampled every tensor flat and spent a quarter of the pass on reorders.)

Tensors whose range follows from another tensor are not measured (tapping them would also stop ONNX
Runtime from fusing Conv+Relu, which costs more than the tap itself):
- the input of a Relu/Clip that is its only consumer takes the range of the Relu/Clip output (ONNX
  Runtime's QDQ quantizer does the same; values below zero become zero anyway);
- the output of an op that only moves values (MaxPool, Reshape, Flatten, Transpose, ...) takes the
  range of its input.

NaN/Inf: ONNX Runtime's ReduceMax/ReduceMin may skip a NaN (they return it only when it comes first), so
the check also looks at the samples; and an FP32 model overflows to Inf before any NaN (its weights and
the images are checked to be finite when read), which always reaches the maximum or minimum of the tensor.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..progress import Progress

NUM_BINS = 2048  # histogram bins of |x| set by the first batch (TensorRT's and ModelOpt's default)
MAX_BINS = 16384  # when later batches stretch the range past this, neighbouring bins are merged
SAMPLES_PER_IMAGE = 8192  # values per image and tensor that enter the histogram
BATCH_SIZE = 8
STATISTICS_VERSION = 2  # 2: activations sampled on a grid (NCHWc-friendly), 1: flat

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


def grid_stride(dims: tuple[int, ...]) -> int:
    """Row and column step of the grid sample of a (C, H, W) activation: at most about SAMPLES_PER_IMAGE values."""
    c, h, w = dims
    return max(1, math.ceil(math.sqrt(c * h * w / SAMPLES_PER_IMAGE)))


@dataclass(frozen=True)
class Sampling:
    """How a measured tensor's histogram sample is taken from each batch.

    `grid` > 0: an activation (N, C, H, W), sampled at rows and columns 0, g, 2g, ... of every channel
    (x[:, :, ::g, ::g]); `flat` otherwise: every `flat`-th value of the batch flattened in NCHW order,
    starting at (batch index) % flat.
    """

    grid: int = 0
    flat: int = 1

    @classmethod
    def of(cls, dims: tuple[int, ...] | None, is_input: bool) -> "Sampling":
        if not is_input and dims is not None and len(dims) == 3 and all(d > 0 for d in dims):
            return cls(grid=grid_stride(dims))
        return cls(flat=sample_stride(dims))


@dataclass(frozen=True)
class StatisticsPlan:
    """Which tensors of a graph are measured (each with how it is sampled) and which take another's range."""

    measured: dict[str, Sampling]  # tensor -> how its histogram sample is taken
    nonnegative: frozenset[str]  # measured outputs of a Relu: min is 0, only the max is computed
    derived: dict[str, str]  # tensor -> the measured tensor whose range it takes

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

        inputs = {vi.name for vi in graph.input}
        measured: dict[str, Sampling] = {}
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
                measured[name] = Sampling.of(shapes.get(name), name in inputs)
        nonnegative = frozenset(n for n in measured if (p := producer.get(n)) is not None and p.op_type in NONNEGATIVE)
        return cls(measured, nonnegative, derived)


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


PREFIX = "resnet_deploy_statistics"  # names of the tensors `augment` adds (made unique against the model's)
MIN_OPSET = 13  # Slice/Mod/Reshape as used below; an older model is converted for the pass (same ops, same values)


@dataclass(frozen=True)
class Outputs:
    """The names `augment` gives the statistics of one measured tensor (outputs of the augmented graph)."""

    maximum: str  # (N,) largest value per image
    minimum: str | None  # (N,) smallest value per image; None for a Relu output (only the max is computed)
    sample: str  # the sample, flat


@dataclass(frozen=True)
class Augmented:
    """The statistics graph: serialized, its batch-index input and the outputs of each measured tensor."""

    model: bytes
    index_input: str  # int64 (1,): the batch index; each sample starts at index % stride
    outputs: dict[str, Outputs]  # measured tensor -> its outputs


def augment(model, plan: StatisticsPlan) -> Augmented:
    """`model` (changed in place) computing the statistics of every measured tensor as its only outputs."""
    import onnx
    from onnx import helper, numpy_helper

    if _opset(model) < MIN_OPSET:
        model.CopyFrom(onnx.version_converter.convert_version(model, MIN_OPSET))
    opset = _opset(model)
    graph = model.graph
    names = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.initializer}
    names |= {vi.name for vi in [*graph.input, *graph.output, *graph.value_info]}
    prefix = PREFIX
    while any(name.startswith(prefix) for name in names):
        prefix += "_"

    def constant(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), f"{prefix}/{name}"))
        return f"{prefix}/{name}"

    def reduce(op: str, data: str, out: str):  # over each image (axis 1 of the (N, -1) view)
        if opset >= 18:
            return helper.make_node(op, [data, per_image_axis], [out], keepdims=0)
        return helper.make_node(op, [data], [out], axes=[1], keepdims=0)

    index = f"{prefix}/batch_index"
    per_image, flat, per_image_axis = constant("per_image", [0, -1]), constant("flat", [-1]), constant("axis1", [1])
    axis0, end = constant("axis0", [0]), constant("end", [np.iinfo(np.int64).max])
    nodes, outputs = [], {}
    for k, (name, sampling) in enumerate(plan.measured.items()):
        t = f"{prefix}/{k}"
        outputs[name] = Outputs(f"{t}/max", None if name in plan.nonnegative else f"{t}/min", f"{t}/sample")
        if sampling.grid:  # NCHWc-friendly: the maximum of each channel, a 1x1 MaxPool with a stride for the sample
            nodes += [
                helper.make_node("GlobalMaxPool", [name], [f"{t}/channel_max"]),
                helper.make_node("Reshape", [f"{t}/channel_max", per_image], [f"{t}/channels"]),
                reduce("ReduceMax", f"{t}/channels", outputs[name].maximum),
            ]
            grid = sampling.grid
            if grid > 1:
                nodes.append(helper.make_node("MaxPool", [name], [f"{t}/grid"], kernel_shape=[1, 1], strides=[grid, grid]))
            nodes.append(helper.make_node("Reshape", [f"{t}/grid" if grid > 1 else name, flat], [outputs[name].sample]))
            if outputs[name].minimum:
                nodes += [
                    helper.make_node("Reshape", [name, per_image], [f"{t}/images"]),
                    reduce("ReduceMin", f"{t}/images", outputs[name].minimum),
                ]
            continue
        step = constant(f"{k}/stride", [sampling.flat])
        nodes += [
            helper.make_node("Reshape", [name, per_image], [f"{t}/images"]),
            reduce("ReduceMax", f"{t}/images", outputs[name].maximum),
            *([reduce("ReduceMin", f"{t}/images", outputs[name].minimum)] if outputs[name].minimum else []),
            helper.make_node("Reshape", [name, flat], [f"{t}/flat"]),
            helper.make_node("Mod", [index, step], [f"{t}/start"]),
            helper.make_node("Slice", [f"{t}/flat", f"{t}/start", end, axis0, step], [outputs[name].sample]),
        ]
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(index, onnx.TensorProto.INT64, [1]))
    del graph.output[:]
    graph.output.extend(
        helper.make_empty_tensor_value_info(o) for out in outputs.values() for o in (out.maximum, out.minimum, out.sample) if o
    )
    return Augmented(model.SerializeToString(), index, outputs)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


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
    """Run the FP32 graph once over `dataset` computing the statistics of the measured tensors; accumulate them."""
    import onnx
    import onnxruntime as ort

    from ..errors import CheckFailed
    from .graph import shape_inferred

    model = onnx.ModelProto.FromString(shape_inferred(model_path))  # shared with ONNX Runtime's quantizer after it
    plan = StatisticsPlan.of(model)
    augmented = augment(model, plan)
    del model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(augmented.model, sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    tensors = {name: TensorStatistics() for name in plan.measured}
    samples = 0
    batches = dataset.iter_batches(BATCH_SIZE)
    tracked = progress.track(batches, len(dataset), "calibration", unit="images", size=lambda batch: len(batch.images))
    for index, batch in enumerate(tracked):
        feed = {input_name: batch.images, augmented.index_input: np.array([index], dtype=np.int64)}
        values = dict(zip(names, session.run(names, feed)))
        samples += len(batch.images)
        for name, out in augmented.outputs.items():
            high = float(values[out.maximum].max())
            low = min(0.0, high) if out.minimum is None else float(values[out.minimum].min())
            sample = np.array(values[out.sample], dtype=np.float32)
            if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(sample).all()):
                raise CheckFailed(
                    f"calibration: tensor {name!r} of the FP32 model is NaN/Inf on the calibration images; "
                    "the FP32 model itself overflows, so it cannot be converted"
                )
            stats = tensors[name]
            stats.add_range(low, high)
            stats.add_sample(sample, max(abs(low), abs(high)))
    return ActivationStatistics(tensors, dict(plan.derived), samples)
