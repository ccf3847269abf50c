"""Latency and throughput of a runner: warm-up first, many timed iterations, percentiles (`reports.report.Latency`).

Each runner is measured in its own block (all its batch sizes, then the next runner): thread pools that
spin after work steal the cores from the next engine when calls are interleaved one by one.
"""

from __future__ import annotations

import time

import numpy as np

from ..engines.base import Runner
from ..options import BenchmarkOptions
from ..progress import Progress
from ..reports.report import Latency


def make_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of `batch_size` real images, repeating the sample when it is smaller."""
    reps = -(-batch_size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch_size], dtype=np.float32)


def time_calls(
    runner: Runner, batch: np.ndarray, warmup: int, iterations: int, max_seconds: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Milliseconds per call, measured with perf_counter after the runner synchronised, and the runner's
    own GPU compute time per call when it measures one (CUDA events), else None."""
    for _ in range(warmup):
        runner.infer(batch)
    runner.synchronize()
    samples, device = [], []
    started = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        runner.infer(batch)
        runner.synchronize()
        samples.append((time.perf_counter() - t0) * 1000.0)
        device_ms = runner.device_ms()
        if device_ms is not None:
            device.append(device_ms)
        if i >= 4 and time.perf_counter() - started > max_seconds:
            break
    return np.array(samples, dtype=np.float64), (np.array(device, dtype=np.float64) if device else None)


def benchmark(runner: Runner, images: np.ndarray, options: BenchmarkOptions, progress: Progress = Progress()) -> list[Latency]:
    """Latency at each batch size of `options`, for an active `runner`."""
    results = []
    for batch_size in progress.track(options.batch_sizes, total=len(options.batch_sizes), description=f"bench {runner.name}"):
        batch = make_batch(images, batch_size)
        runner.prepare(batch_size)
        samples, device_ms = time_calls(runner, batch, options.warmup, options.iterations, options.max_seconds)
        results.append(Latency.from_samples(batch_size, samples, device_ms))
    return results


def benchmark_all(
    runners: list[Runner], images: np.ndarray, options: BenchmarkOptions, progress: Progress = Progress()
) -> list[list[Latency]]:
    """Each runner in its own warmed block, one after the other, in the same run."""
    results = []
    for runner in runners:
        with runner:
            results.append(benchmark(runner, images, options, progress))
    return results


def latency_cost(
    before: Runner,
    after: Runner,
    images: np.ndarray,
    batch_sizes: tuple[int, ...],
    warmup: int = 5,
    iterations: int = 20,
    rounds: int = 2,
    progress: Progress = Progress(),
) -> list[dict[str, float]]:
    """What a change to a model costs in latency: `before` and `after` each in its own warmed block, the
    two blocks alternating for `rounds`; p50 of all the calls per batch size, and the difference."""
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in progress.track(range(rounds), total=rounds, description=f"latency cost {after.name}"):
        for which, runner in enumerate((before, after)):
            with runner:
                for batch_size in batch_sizes:
                    timed, _ = time_calls(runner, make_batch(images, batch_size), warmup, iterations, max_seconds=30.0)
                    samples.setdefault((which, batch_size), []).extend(timed.tolist())
    rows = []
    for batch_size in batch_sizes:
        old, new = (float(np.median(samples[(which, batch_size)])) for which in (0, 1))
        rows.append(
            {
                "batch_size": batch_size,
                "before_p50_ms": round(old, 4),
                "after_p50_ms": round(new, 4),
                "cost_ms": round(new - old, 4),
                "cost_pct": round((new / old - 1.0) * 100.0, 2) if old > 0 else None,
                "calls": len(samples[(1, batch_size)]),
            }
        )
    return rows
