"""ResNet-50 INT8 (onnxruntime target) served through Triton against the same engine in process, side by side.

    python benchmarks/serving.py            # the full run (a few minutes)
    python benchmarks/serving.py --quick    # a smoke run: fewer requests, concurrency 1, 8

What runs: a real `resnet-deploy build` of a random-weight ResNet-50 (224x224) with INT8 for the onnxruntime
target only, then `resnet-deploy triton --python-backend` (the repository a Triton with only its Python backend
serves on the CPU) and one tritonserver (the nvidia-pytriton wheel's, or one on PATH). In one run, each in its
own block: the INT8 ONNX in this process on ONNX Runtime at batch 1 and batch 8 (OrtRunner, warmed; once
before and once after the server, both printed, the ratios against their mean, so that a machine whose load
changed during the run shows it), and the served model at each concurrency (tritonclient gRPC, one image per
request, dynamic batching with preferred batch sizes 8 and 16). Printed: images/s and latency per row, the
served throughput as a ratio of the in-process batch-1 and batch-8 throughput, and the mean batch the dynamic
batcher formed. The aim: at concurrency 8, served throughput at least 75% of in-process batch 8.

The client runs on the same machine as the server and competes with it for the cores (gRPC serialization of
600 KB requests); numbers depend on what else runs there: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cpu_engines import ARCH, SHAPE

from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.models import create_model, resolve_arch
from resnet_deploy.pipeline.benchmark import make_batch, time_calls
from resnet_deploy.serving.load import LoadOptions, sweep
from resnet_deploy.serving.repository import read_repository
from resnet_deploy.serving.server import TritonServer, find_tritonserver

AIM = 0.75  # served throughput at concurrency 8 / in-process batch-8 throughput


def cli(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "resnet-deploy"), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def build(folder: Path, threads: int, images: int) -> Path:
    """A random-weight ResNet-50 through `resnet-deploy build` (INT8, onnxruntime target) and its Python-backend repository."""
    torch.manual_seed(0)
    weights = folder / "resnet50.pth"
    torch.save(create_model(resolve_arch(ARCH), 1000).state_dict(), weights)
    rng = np.random.default_rng(0)
    for name in ("calib", "val"):
        np.savez(folder / f"{name}.npz", images=rng.standard_normal((images, *SHAPE), dtype=np.float32))
    out, repo = folder / "out", folder / "repo"
    cli("build", "--arch", ARCH, "--weights", str(weights), "--calib-data", str(folder / "calib.npz"),
        "--val-data", str(folder / "val.npz"), "--precision", "int8", "--target", "onnxruntime", "--engines", "onnxruntime",
        "--calib-size", str(images), "--batch-sizes", "1,8", "--warmup", "1", "--iterations", "3",
        "--threads", str(threads), "--out", str(out), "--quiet")  # fmt: skip
    cli("triton", str(out), "--repo", str(repo), "--python-backend", "--threads", str(threads),
        "--max-batch-size", "16", "--preferred-batch-sizes", "8,16", "--max-queue-delay-us", "2000")  # fmt: skip
    return repo


def in_process(onnx: Path, threads: int, warmup: int, iterations: int) -> dict[int, float]:
    """Images/s of the INT8 ONNX on ONNX Runtime in this process, at batch 1 and 8 (median call)."""
    images = np.random.default_rng(1).standard_normal((8, *SHAPE), dtype=np.float32)
    out = {}
    with OrtRunner(onnx, "onnxruntime-int8", "int8", "onnxruntime", ("cpu",), threads) as runner:
        for batch in (1, 8):
            timed, _ = time_calls(runner, make_batch(images, batch), warmup, iterations, max_seconds=120.0)
            out[batch] = batch / (float(np.median(timed)) / 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, fewer requests")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads, in process and served")
    parser.add_argument("--requests", type=int, default=240, help="timed requests per concurrency (default 240)")
    args = parser.parse_args()
    concurrency = (1, 8) if args.quick else (1, 2, 4, 8, 16)
    requests, iterations = (64, 10) if args.quick else (args.requests, 40)
    torch.set_num_threads(args.threads)
    install = find_tritonserver()
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-bench-serving-") as tmp:
        folder = Path(tmp)
        print(f"building {ARCH} INT8 (random weights) and its Triton repository ...", file=sys.stderr)
        repo = build(folder, args.threads, 32)
        model = read_repository(repo)[0]
        before = in_process(model.model_file, args.threads, 5, iterations)
        images = np.random.default_rng(2).standard_normal((16, *SHAPE), dtype=np.float32)
        print(f"serving {model.name} on tritonserver ({install.origin}) ...", file=sys.stderr)
        with TritonServer(install, repo, [model.name], folder / "work", startup_timeout=300) as server:
            levels = sweep(
                server.url, model.name, model.input_name, model.output_name, images,
                LoadOptions(concurrency, requests, 120.0, warmup=16),
            )  # fmt: skip
        after = in_process(model.model_file, args.threads, 5, iterations)
    local = {b: (before[b] + after[b]) / 2 for b in before}
    print(f"\n## {ARCH} {'x'.join(map(str, SHAPE))} INT8 (onnxruntime target), ONNX Runtime CPU, {args.threads} threads, "
          f"tritonserver {server.version} Python backend\n")  # fmt: skip
    print("| engine | concurrency / batch | images/s | p50 ms | p99 ms | mean batch | vs in-process b1 | vs in-process b8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for when, measured in (("before", before), ("after", after)):
        for batch, ips in measured.items():
            ms, vs1, vs8 = batch / ips * 1e3, ips / local[1], ips / local[8]
            print(f"| in process ({when}) | batch {batch} | {ips:.1f} | {ms:.2f} | | | {vs1:.2f}x | {vs8:.2f}x |")
    for level in levels:
        ips = level["throughput_ips"]
        print(
            f"| Triton | {level['concurrency']} | {ips:.1f} | {level['p50_ms']:.2f} | {level['p99_ms']:.2f} | "
            f"{level['server']['mean_batch']:.2f} | {ips / local[1]:.2f}x | {ips / local[8]:.2f}x |"
        )
    at8 = next((lv["throughput_ips"] for lv in levels if lv["concurrency"] == 8), None)
    if at8 is not None:
        ratio = at8 / local[8]
        verdict = "met" if ratio >= AIM else "missed"
        print(f"\naim: served at concurrency 8 >= {AIM:.0%} of in-process batch 8: {ratio:.0%} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
