"""Calibration: the statistics pass against an independent computation, the range math against reference
implementations, the calibration draw, and calib.json as a cache (reused, and invalidated)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy as kl_divergence

from resnet_deploy.calibration import calibrate as calibrate_module
from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate, read_cache
from resnet_deploy.calibration.methods import (
    CalibrationMethod,
    CalibrationOptions,
    entropy_amax,
    parse_method,
    percentile_amax,
)
from resnet_deploy.calibration.statistics import (
    BATCH_SIZE,
    SAMPLES_PER_IMAGE,
    Sampling,
    StatisticsPlan,
    TensorStatistics,
    grid_stride,
    sample_stride,
)
from resnet_deploy.data import open_dataset
from resnet_deploy.errors import UserError

# ------------------------------------------------------------------------------------ the range math


def modelopt_entropy_reference(counts: np.ndarray, edges: np.ndarray, start_bin: int = 128, nbins: int = 128) -> float:
    """ModelOpt's `_compute_amax_entropy` (num_bits=8, stride=1) as written there: a loop per candidate."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        density = np.zeros(nbins)
        for idx, d in enumerate(digitized):
            if d != -1:
                density[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                density[key] /= val
        candidate = np.array([density[d] if d != -1 else 0.0 for d in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        divergences.append(kl_divergence(reference, candidate))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin + start_bin])


@pytest.mark.parametrize("case", range(4))
def test_entropy_equals_modelopts_algorithm(case):
    rng = np.random.default_rng(case)
    values = [
        np.abs(rng.standard_normal(100_000)),
        np.maximum(rng.standard_normal(50_000), 0) ** 2,
        np.concatenate([np.abs(rng.standard_normal(80_000)), rng.exponential(4.0, 300) * 3]),  # a long tail
        rng.laplace(size=60_000),
    ][case]
    bins = [300, 420, 512, 257][case]
    counts, edges = np.histogram(np.abs(values), bins=bins, range=(0, np.abs(values).max()))
    if case == 2:
        counts[200:260] = 0  # empty stretches inside the range
    assert entropy_amax(counts, edges[1] - edges[0]) == pytest.approx(modelopt_entropy_reference(counts, edges), rel=1e-9)


def test_percentile_matches_numpy_within_one_bin():
    values = np.abs(np.random.default_rng(1).standard_normal(400_000))
    counts, edges = np.histogram(values, bins=2048, range=(0, values.max()))
    width = edges[1] - edges[0]
    for p in (99.0, 99.9, 99.99, 100.0):
        ours = percentile_amax(counts, width, p)
        assert np.percentile(values, p) <= ours <= np.percentile(values, p) + width + 1e-12


def test_options_are_checked():
    with pytest.raises(UserError, match="--calib-method: unknown method 'kl'"):
        parse_method("kl")
    with pytest.raises(UserError, match="--percentile"):
        CalibrationOptions(percentile=20)
    with pytest.raises(UserError, match="--exclude-layers.*not a valid regular expression"):
        CalibrationOptions(exclude_layers="conv[")
    with pytest.raises(UserError, match="--calib-size"):
        CalibrationOptions(size=0)


def test_sample_stride_is_prime_and_coprime_with_the_shape():
    assert sample_stride((64, 8, 8)) == 1  # small tensors: every value
    for dims in [(256, 56, 56), (64, 112, 112), (2048, 7, 7), (104, 91, 91), (11, 121, 127)]:
        step = sample_stride(dims)
        assert step > 1 and all(step % k for k in range(2, step)) and all(d % step for d in dims)
        assert int(np.prod(dims)) // step >= 8192 * 0.5


def test_grid_stride_samples_about_samples_per_image_values():
    """Activations are sampled on a grid of rows and columns (x[:, :, ::g, ::g]): at most about SAMPLES_PER_IMAGE
    values per image, never fewer than a quarter of them when the activation has more, every channel."""
    assert grid_stride((64, 8, 8)) == 1  # small: every value
    for dims in [(256, 56, 56), (64, 112, 112), (2048, 7, 7), (1024, 14, 14), (104, 91, 91), (11, 121, 127), (512, 28, 28)]:
        c, h, w = dims
        g = grid_stride(dims)
        count = c * len(range(0, h, g)) * len(range(0, w, g))
        assert SAMPLES_PER_IMAGE / 4 <= count <= 2 * SAMPLES_PER_IMAGE, (dims, g, count)
    assert Sampling.of((256, 56, 56), is_input=False) == Sampling(grid=grid_stride((256, 56, 56)))
    assert Sampling.of((3, 224, 224), is_input=True) == Sampling(flat=sample_stride((3, 224, 224)))  # the image: flat
    assert Sampling.of((1000,), is_input=False) == Sampling(flat=1)


# ------------------------------------------------------------------------------------ the statistics


def test_shape_inference_is_onnxruntimes_own(fp32_onnx, tmp_path):
    """The shapes both the statistics pass and ONNX Runtime's quantizer start from (inferred without the weights'
    values) give, with its metadata, the model quantize_static's load_model_with_shape_infer makes, byte for byte:
    for our export (which has its value_info) and for the same graph without it (another exporter's)."""
    import onnx
    from onnxruntime.quantization.quant_utils import add_infer_metadata, load_model_with_shape_infer

    from resnet_deploy.calibration.graph import SHAPE_DATA_BYTES, shape_inferred

    exported = onnx.load(str(fp32_onnx.path))
    assert sum(len(t.raw_data) > SHAPE_DATA_BYTES for t in exported.graph.initializer) >= 20  # values really set aside
    bare = onnx.load(str(fp32_onnx.path))
    del bare.graph.value_info[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    shutil.copyfile(fp32_onnx.path, tmp_path / "exported.onnx")
    for name in ("exported.onnx", "bare.onnx"):
        ours = onnx.ModelProto.FromString(shape_inferred(tmp_path / name))
        add_infer_metadata(ours)
        reference = load_model_with_shape_infer(tmp_path / name)  # it writes a temporary file beside the model
        assert len(reference.graph.value_info) >= len(exported.graph.value_info) - len(exported.graph.initializer), name
        assert ours.SerializeToString() == reference.SerializeToString(), name


def test_statistics_match_an_independent_pass(fp32_onnx, calib_dataset, calibration):
    """min/max and histogram of every measured tensor equal those of a plain ORT run with the tensor as an output,
    reduced and sampled in numpy (the first version of the pass: the in-graph statistics must not diverge from it)."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32_onnx.path)))
    plan = StatisticsPlan.of(model)
    names = [n for n in plan.measured if n not in {i.name for i in model.graph.input}]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    low = {n: np.inf for n in plan.measured}
    high = {n: -np.inf for n in plan.measured}
    histograms = {n: TensorStatistics() for n in plan.measured}
    images = 0
    for index, batch in enumerate(calib_dataset.iter_batches(BATCH_SIZE)):
        images += len(batch.images)
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch.images})))
        outputs["input"] = batch.images
        for n, sampling in plan.measured.items():
            low[n], high[n] = min(low[n], outputs[n].min()), max(high[n], outputs[n].max())
            batch_low = min(0.0, outputs[n].max()) if n in plan.nonnegative else outputs[n].min()
            batch_amax = max(abs(float(batch_low)), abs(float(outputs[n].max())))
            if sampling.grid:
                sample = outputs[n][:, :, :: sampling.grid, :: sampling.grid].reshape(-1)
            else:
                sample = outputs[n].reshape(-1)[index % sampling.flat :: sampling.flat]
            histograms[n].add_sample(np.array(sample, np.float32), batch_amax)
    stats = calibration.statistics
    assert stats.samples == images == 270
    assert set(stats.tensors) == set(plan.measured)
    assert any(s.grid for s in plan.measured.values()) and any(not s.grid for s in plan.measured.values())  # both kinds
    for n, s in stats.tensors.items():
        expected_low = min(0.0, low[n]) if n in plan.nonnegative else low[n]
        assert s.minimum == pytest.approx(expected_low, abs=1e-6) and s.maximum == pytest.approx(high[n], abs=1e-6), n
        assert s.counts is not None and s.counts.sum() > 0 and s.width > 0
        assert s.width * len(s.counts) >= s.amax  # the histogram covers every value seen
        assert s.width == pytest.approx(histograms[n].width, rel=1e-6), n
        assert np.abs(s.counts - histograms[n].counts).sum() <= 2, n  # the same samples (a value on a bin edge may move)


def test_statistics_pass_shows_images_per_second(fp32_onnx, calib_dataset):
    """The bar of the statistics pass (what the build's INT8 stage shows on a terminal) counts images, with a rate."""
    import io

    from rich.console import Console

    from resnet_deploy.progress import RichProgress

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    calib = CalibrationSet.draw(calib_dataset, 64, 0)
    with RichProgress(console) as progress:
        calibrate(fp32_onnx, calib, CalibrationOptions(size=64), progress=progress)
        console.file.flush()
    drawn = screen.getvalue()
    assert "calibration" in drawn and re.search(r"\d+/64", drawn), drawn[-500:]
    assert re.search(r"\d+(\.\d)? images/s", drawn), drawn[-500:]


def test_derived_tensors_take_the_range_of_their_relu_or_input(fp32_onnx, calibration):
    import onnx

    model = onnx.load(str(fp32_onnx.path))
    producer = {o: n for n in model.graph.node for o in n.output}
    derived = calibration.statistics.derived
    relu_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Relu"]
    assert relu_inputs and all(derived[t] == producer_out for t, producer_out in _relu_pairs(model) if t in derived)
    maxpool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert derived[maxpool.output[0]] == maxpool.input[0]  # MaxPool moves values: its input's range
    ranges = calibration.ranges
    for tensor, root in derived.items():
        assert ranges[tensor] == ranges[root]
    assert producer[relu_inputs[0]].op_type == "Conv"


def _relu_pairs(model):
    return [(n.input[0], n.output[0]) for n in model.graph.node if n.op_type == "Relu"]


def test_methods_differ_only_in_the_clipping(calibration):
    """max keeps every value; entropy and percentile clip some tensors, never beyond the observed max."""
    by_method = {m: calibration.with_method(m, 99.99).ranges for m in CalibrationMethod}
    for name, r in by_method[CalibrationMethod.MAX].items():
        assert r.amax == pytest.approx(max(abs(r.minimum), abs(r.maximum)))
        assert (r.low, r.high) == (r.minimum, r.maximum)
        for method in (CalibrationMethod.ENTROPY, CalibrationMethod.PERCENTILE):
            other = by_method[method][name]
            assert 0 < other.amax <= r.amax + 1e-9 and other.scale == pytest.approx(other.amax / 127)
    full, entropy = by_method[CalibrationMethod.MAX], by_method[CalibrationMethod.ENTROPY]
    clipped = [n for n in full if entropy[n].amax < full[n].amax * 0.99]
    assert clipped, "entropy calibration clipped no tensor at all"


def test_calibration_draw_is_deterministic_and_bounded(calib_dataset):
    a, b = CalibrationSet.draw(calib_dataset, 100, 7), CalibrationSet.draw(calib_dataset, 100, 7)
    c = CalibrationSet.draw(calib_dataset, 100, 8)
    assert len(a.dataset) == 100 and a.dataset.files == b.dataset.files and a.digest == b.digest
    assert a.dataset.files != c.dataset.files and a.digest != c.digest
    assert list(a.dataset.files) == sorted(a.dataset.files, key=calib_dataset.files.index)  # read in file order
    everything = CalibrationSet.draw(calib_dataset, 10_000, 0)
    assert len(everything.dataset) == len(calib_dataset) == everything.available


def test_overlap_with_validation_is_counted(calib_dataset, workload, loaded, tmp_path):
    val = open_dataset(workload.val, loaded.preprocess)
    calib = CalibrationSet.draw(calib_dataset, 50, 0)
    assert calib.overlap(val) == 0
    assert calib.overlap(calib_dataset) == 50
    linked = tmp_path / "linked"
    (linked / "0").mkdir(parents=True)
    for path in calib.dataset.files[:3]:
        (linked / "0" / path.name).symlink_to(path)  # the same files under other names
    assert calib.overlap(open_dataset(linked, loaded.preprocess)) == 3


# ------------------------------------------------------------------------------------------ the cache


@pytest.fixture
def counted_passes(monkeypatch):
    """Counts statistics passes: a reused cache must not start one."""
    calls = []
    real = calibrate_module.collect_statistics

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(calibrate_module, "collect_statistics", counting)
    return calls


def test_cache_is_reused_when_nothing_changed(fp32_onnx, calib_dataset, tmp_path, counted_passes):
    cache = tmp_path / "calib.json"
    calib = CalibrationSet.draw(calib_dataset, 64, 0)
    first = calibrate(fp32_onnx, calib, CalibrationOptions(size=64, cache=cache))
    first.write(cache)
    assert len(counted_passes) == 1 and not first.reused
    options = CalibrationOptions(size=64, cache=cache, method=CalibrationMethod.MAX)
    second = calibrate(fp32_onnx, CalibrationSet.draw(calib_dataset, 64, 0), options)
    assert len(counted_passes) == 1, "the second run measured the images again"
    assert second.reused and second.samples == 64
    assert second.ranges == first.with_method(CalibrationMethod.MAX, 99.99).ranges  # same statistics, other method
    record = json.loads(cache.read_text())
    assert record["samples"] == 64 and record["method"] == "entropy" and record["onnx_sha256"] == first.onnx_sha256
    assert record["data_sha256"] == calib.digest
    some = next(iter(record["tensors"].values()))
    assert set(some) >= {"amax", "scale", "min", "max"}


def test_cache_is_invalidated_when_the_onnx_changes(fp32_onnx, calib_dataset, tmp_path, counted_passes):
    import onnx

    from resnet_deploy.artifacts import OnnxArtifact, sidecar_path
    from resnet_deploy.files import sha256_file, write_json_atomic

    cache = tmp_path / "calib.json"
    calib = CalibrationSet.draw(calib_dataset, 32, 0)
    calibrate(fp32_onnx, calib, CalibrationOptions(size=32, cache=cache)).write(cache)
    model = onnx.load(str(fp32_onnx.path))
    weight = next(i for i in model.graph.initializer if i.name == "fc.weight")
    array = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), "fc.weight"))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    write_json_atomic(sidecar_path(changed), {**fp32_onnx.metadata(), "sha256": sha256_file(changed)})
    result = calibrate(OnnxArtifact.read(changed), calib, CalibrationOptions(size=32, cache=cache))
    assert len(counted_passes) == 2 and not result.reused
    assert "the FP32 ONNX changed" in result.notes[0]


def test_cache_is_invalidated_when_the_images_change(fp32_onnx, workload, loaded, tmp_path, counted_passes):
    from PIL import Image

    folder = tmp_path / "calib"
    shutil.copytree(workload.calib, folder)
    cache = tmp_path / "calib.json"
    calib = CalibrationSet.draw(open_dataset(folder, loaded.preprocess), 32, 0)
    calibrate(fp32_onnx, calib, CalibrationOptions(size=32, cache=cache)).write(cache)
    victim = calib.dataset.files[0]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)  # same name, other pixels
    again = CalibrationSet.draw(open_dataset(folder, loaded.preprocess), 32, 0)
    assert again.dataset.files == calib.dataset.files  # same file list ...
    result = calibrate(fp32_onnx, again, CalibrationOptions(size=32, cache=cache))
    assert len(counted_passes) == 2 and not result.reused  # ... but the content changed
    assert "the calibration images changed" in result.notes[0]
    stats, why = read_cache(tmp_path / "missing.json", result.onnx_sha256, again.digest)
    assert stats is None and why == ""  # no cache yet (quantize/layers default to OUT/calib.json): nothing to say
    first = calibrate(fp32_onnx, again, CalibrationOptions(size=32, cache=tmp_path / "missing.json"))
    assert not first.reused and first.notes == ()
