"""Benchmark bookkeeping (no timing asserts: speed is measured in benchmarks/, not in tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.errors import UserError
from resnet_deploy.files import dumps_json
from resnet_deploy.options import BenchmarkOptions
from resnet_deploy.pipeline.benchmark import benchmark, make_batch
from resnet_deploy.reports.report import Latency


def test_latency_statistics_match_numpy():
    samples = np.random.default_rng(0).gamma(4.0, 2.0, 500)
    lat = Latency.from_samples(8, samples)
    assert lat.p50_ms == pytest.approx(np.median(samples))
    assert lat.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert lat.std_ms == pytest.approx(samples.std(ddof=1))
    assert lat.throughput_ips == pytest.approx(8 * 1000 / samples.mean())


def test_make_batch_repeats_real_images():
    images = np.arange(3 * 3 * 2 * 2, dtype=np.float32).reshape(3, 3, 2, 2)
    batch = make_batch(images, 7)
    assert batch.shape == (7, 3, 2, 2) and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[3], images[0])


def test_benchmark_times_each_batch_size(fp32_onnx, val_images):
    options = BenchmarkOptions(batch_sizes=(1, 3), warmup=1, iterations=6)
    with OrtRunner(fp32_onnx.path, "onnxruntime-fp32", "fp32", threads=1) as runner:
        rows = benchmark(runner, val_images[:2], options)
    assert [r.batch_size for r in rows] == [1, 3]
    assert all(r.iterations == 6 and 0 < r.min_ms <= r.p50_ms <= r.max_ms for r in rows)
    for row in rows:  # every timed call is kept, in ms, for distribution plots
        assert len(row.samples_ms) == 6 and min(row.samples_ms) == pytest.approx(row.min_ms, abs=1e-4)


def test_samples_are_one_compact_line_in_json():
    lat = Latency.from_samples(2, np.array([1.234567891, 2.5, 3.0]))
    assert lat.samples_ms == (1.2346, 2.5, 3.0)
    text = dumps_json({"latency": [lat.as_dict()]})
    assert '"samples_ms": [1.2346, 2.5, 3.0]' in text and json.loads(text)["latency"][0] == {**lat.as_dict()}
    old = {k: v for k, v in lat.as_dict().items() if k != "samples_ms"}  # a report written before samples
    assert Latency(**old).samples_ms == ()


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"warmup": -1}, {"batch_sizes": ()}, {"batch_sizes": (0, 1)}])
def test_bad_benchmark_options(kwargs):
    with pytest.raises(UserError):
        BenchmarkOptions(**kwargs)
