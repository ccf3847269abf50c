"""Requests to a Triton model through tritonclient's gRPC client, at a fixed concurrency.

`send(url, model, images, concurrency, ...)`: `concurrency` threads, each with its own client, keep one request
in flight each (perf_analyzer's concurrency mode), one image per request, so that batches form only in the
server's dynamic batcher. Every run is bounded in requests and in seconds. `Statistics` reads Triton's
statistics API before and after a run: the difference is that run's server-side queue and compute time and
the batch sizes the dynamic batcher formed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckFailed


@dataclass(frozen=True)
class LoadOptions:
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int = 500  # timed requests per concurrency level, at most
    seconds: float = 10.0  # per concurrency level, at most
    warmup: int = 16  # untimed requests before each level

    def __post_init__(self) -> None:
        from ..errors import UserError

        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 256:
            raise UserError(f"--concurrency: each level must be between 1 and 256, got {list(self.concurrency)}")
        if not 1 <= self.requests <= 10_000_000:
            raise UserError(f"--requests must be between 1 and 10000000, got {self.requests}")
        if not 0.1 <= self.seconds <= 3600:
            raise UserError(f"--seconds must be between 0.1 and 3600, got {self.seconds:g}")


@dataclass(frozen=True)
class Sent:
    """One run: per-request latencies (ms), wall time, and the outputs kept when asked (by image index)."""

    latencies_ms: np.ndarray
    seconds: float
    outputs: dict[int, np.ndarray]


def send(
    url: str,
    model: str,
    input_name: str,
    output_name: str,
    images: np.ndarray,
    concurrency: int,
    requests: int,
    seconds: float,
    keep_outputs: bool = False,
) -> Sent:
    """Up to `requests` single-image requests (image i % len(images)) within `seconds`, `concurrency` at a time."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    counter, lock = itertools.count(), threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    outputs: dict[int, np.ndarray] = {}
    failures: list[str] = []
    spans: list[tuple[float, float]] = []  # (first request sent, last answer received) of each worker
    deadline = time.perf_counter() + seconds

    def worker(slot: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        first = last = None
        try:
            wanted = [grpcclient.InferRequestedOutput(output_name)]
            while not failures and time.perf_counter() < deadline:
                with lock:
                    index = next(counter)
                if index >= requests:
                    return
                image = images[index % len(images)][None]
                tensor = grpcclient.InferInput(input_name, list(image.shape), "FP32")
                tensor.set_data_from_numpy(image)
                started = time.perf_counter()
                result = client.infer(model, [tensor], outputs=wanted, client_timeout=max(1.0, seconds))
                last = time.perf_counter()
                first = started if first is None else first
                latencies[slot].append((last - started) * 1e3)
                if keep_outputs:
                    outputs[index] = result.as_numpy(output_name)[0]
        except (InferenceServerException, ValueError) as exc:  # an error response, or an output that does not fit
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        finally:
            client.close()
            if first is not None:
                spans.append((first, last))

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60.0)  # a request cannot outlive its client timeout; this is the last bound
    wall = max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0
    if failures:
        raise CheckFailed(f"Triton model {model}: a request failed at concurrency {concurrency}: {failures[0]}")
    if any(thread.is_alive() for thread in threads):
        raise CheckFailed(f"Triton model {model}: requests did not finish at concurrency {concurrency}")
    return Sent(np.array([x for slot in latencies for x in slot]), wall, outputs)


def _ns(stat: dict[str, Any]) -> tuple[int, int]:
    return int(stat.get("count", 0)), int(stat.get("ns", 0))


class Statistics:
    """Triton's statistics of one model (statistics API), read before and after a run."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model

    def read(self) -> dict[str, Any]:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        try:
            stats = client.get_inference_statistics(model_name=self.model, as_json=True)["model_stats"][0]
        finally:
            client.close()
        inference = stats.get("inference_stats", {})
        return {
            "inferences": int(stats.get("inference_count", 0)),
            "executions": int(stats.get("execution_count", 0)),
            **{
                key: _ns(inference.get(key, {}))
                for key in ("success", "queue", "compute_input", "compute_infer", "compute_output")
            },
            "batches": {int(b["batch_size"]): _ns(b.get("compute_infer", {}))[0] for b in stats.get("batch_stats", [])},
        }

    @staticmethod
    def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """Server-side numbers of the run between two reads: mean queue and compute time per request (us), batches."""
        requests = after["success"][0] - before["success"][0]

        def per_request_us(key: str) -> float | None:
            spent = after[key][1] - before[key][1]
            return None if requests <= 0 else round(spent / requests / 1e3, 1)

        inferences = after["inferences"] - before["inferences"]
        executions = after["executions"] - before["executions"]
        batches = {size: after["batches"].get(size, 0) - before["batches"].get(size, 0) for size in after["batches"]}
        compute = [per_request_us(k) for k in ("compute_input", "compute_infer", "compute_output")]
        return {
            "requests": requests,
            "queue_us": per_request_us("queue"),
            "compute_us": None if None in compute else round(sum(compute), 1),
            "compute_infer_us": compute[1],
            "inferences": inferences,
            "executions": executions,
            "mean_batch": None if executions <= 0 else round(inferences / executions, 3),
            "batch_sizes": {str(size): count for size, count in sorted(batches.items()) if count > 0},
        }


def percentiles(latencies_ms: np.ndarray) -> dict[str, float | None]:
    if not len(latencies_ms):
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "mean_ms": round(float(latencies_ms.mean()), 3)}  # fmt: skip


def sweep(
    url: str,
    model: str,
    input_name: str,
    output_name: str,
    images: np.ndarray,
    options: LoadOptions,
    on_level: Callable[[int], None] = lambda concurrency: None,
) -> list[dict[str, Any]]:
    """Client latency percentiles and throughput, and the server's statistics, at each concurrency level."""
    statistics = Statistics(url, model)
    levels = []
    for concurrency in options.concurrency:
        on_level(concurrency)
        send(url, model, input_name, output_name, images, concurrency, options.warmup, options.seconds)
        before = statistics.read()
        sent = send(url, model, input_name, output_name, images, concurrency, options.requests, options.seconds)
        after = statistics.read()
        levels.append(
            {
                "concurrency": concurrency,
                "requests": len(sent.latencies_ms),
                "seconds": round(sent.seconds, 3),
                "throughput_ips": round(len(sent.latencies_ms) / sent.seconds, 2) if sent.seconds > 0 else None,
                **percentiles(sent.latencies_ms),
                "server": Statistics.difference(before, after),
            }
        )
    return levels
