"""CPU engines side by side: ResNet-50 at 224x224 (random weights), and the cost of making the INT8 models.

    python benchmarks/cpu_engines.py            # the full run (a few minutes; ModelOpt's own calibration ~2 min)
    python benchmarks/cpu_engines.py --quick    # a smoke run: fewer iterations and calibration images

Part 1, latency. Engines: PyTorch eager FP32, PyTorch with BatchNorm folded, ONNX Runtime FP32, INT8 for
the onnxruntime target, INT8 for the tensorrt target (run by ONNX Runtime on the CPU), FP16 (AutoCast).
Each engine runs in its own warmed block (all batch sizes), the blocks in rounds: thread pools that spin
after work (PyTorch's OpenMP, ONNX Runtime's) steal the cores from the next engine when calls are
interleaved one by one. Printed: the median over all rounds, the speed-up over PyTorch eager, and the
achieved GMAC/s (multiply-accumulates of the Conv and Gemm layers, counted from the ONNX graph).

Part 2, the INT8 quantize step with N calibration images (entropy): our one statistics pass plus both
quantizers, against one plain FP32 pass over the same images and against ModelOpt's own entropy
calibration (`modelopt.onnx.quantization.quantize`, which calibrates inside ONNX Runtime's calibrator).

Numbers depend on the machine and on what else runs on it: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
from resnet_deploy.calibration.fp16 import convert_fp16
from resnet_deploy.calibration.methods import CalibrationOptions
from resnet_deploy.calibration.quantize import captured_output, quantize_int8
from resnet_deploy.config import Target
from resnet_deploy.data import NpzDataset
from resnet_deploy.engines.base import Runner
from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.models import create_model, load_model, resolve_arch
from resnet_deploy.pipeline.benchmark import make_batch, time_calls
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_and_verify

ARCH = "resnet50"
SHAPE = (3, 224, 224)


def conv_gemm_macs(onnx_path: Path) -> int:
    """Multiply-accumulates per image of the Conv and Gemm nodes (shapes from ONNX shape inference)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]
    }
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            cout, cin_per_group, *kernel = weights[node.input[1]]
            macs += cout * int(np.prod(out[2:])) * cin_per_group * int(np.prod(kernel))
        elif node.op_type == "Gemm":
            n, k = weights[node.input[1]]
            macs += n * k
    return macs


def prepare(folder: Path, calib_images: int, threads: int):
    """Random-weight ResNet-50 -> folded -> FP32 ONNX; a .npz of random calibration images."""
    torch.manual_seed(0)
    weights = folder / "resnet50.pth"
    torch.save(create_model(resolve_arch(ARCH), 1000).state_dict(), weights)
    model = load_model(ARCH, weights)
    rng = np.random.default_rng(0)
    check = rng.standard_normal((4, *SHAPE), dtype=np.float32)
    folded, _ = fold_and_verify(model, check)
    fp32 = export_onnx(folded, model.info, check, folder / "model.fp32.onnx")
    images = rng.standard_normal((calib_images, *SHAPE), dtype=np.float32)
    np.savez(folder / "calib.npz", images=images)
    return model, folded, fp32, NpzDataset.open(folder / "calib.npz", SHAPE, option="--calib-data")


def time_quantize_step(fp32, dataset, folder: Path, threads: int, with_modelopt: bool):
    """Seconds for: a plain FP32 pass, our statistics pass, each quantizer; ModelOpt's own entropy flow."""
    seconds: dict[str, float] = {}
    with OrtRunner(fp32.path, "fp32-pass", "fp32", threads=threads) as runner:
        started = time.perf_counter()
        for batch in dataset.iter_batches(8):
            runner.infer(batch.images)
        seconds["one FP32 pass (reference)"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = calibrate(fp32, CalibrationSet.draw(dataset, len(dataset), 0), CalibrationOptions(), threads)
    seconds["statistics pass"] = time.perf_counter() - started
    example = dataset.select([0])
    image = next(iter(example.iter_batches(1))).images
    for target in Target:
        started = time.perf_counter()
        quantize_int8(fp32, calibration, target, folder / f"model.int8-{target}.onnx", image)
        seconds[f"quantize {target} (ranges given)"] = time.perf_counter() - started
    seconds["ours: statistics + both targets"] = sum(v for k, v in seconds.items() if k.startswith(("statistics", "quantize")))
    if with_modelopt:
        import modelopt.onnx.quantization as moq

        data = np.concatenate([b.images for b in dataset.iter_batches(64)])
        started = time.perf_counter()
        with captured_output():
            moq.quantize(
                onnx_path=str(fp32.path),
                quantize_mode="int8",
                calibration_method="entropy",
                calibration_data={fp32.input_name: data},
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
                output_path=str(folder / "model.int8-modelopt-own.onnx"),
                log_level="ERROR",
            )
        seconds["ModelOpt's own entropy calibration (tensorrt only)"] = time.perf_counter() - started
    return seconds, calibration


def engines(model, folded, folder: Path, fp32, threads: int, calibration) -> list[Runner]:
    fp16 = convert_fp16(fp32, calibration, folder / "model.fp16.onnx")
    return [
        PyTorchRunner(model.module, "pytorch-eager-fp32", threads),
        PyTorchRunner(folded, "pytorch-bn-folded-fp32", threads),
        OrtRunner(fp32.path, "onnxruntime-fp32", "fp32", threads=threads),
        OrtRunner(folder / "model.int8-onnxruntime.onnx", "onnxruntime-int8", "int8", "onnxruntime", threads=threads),
        OrtRunner(folder / "model.int8-tensorrt.onnx", "onnxruntime-int8-tensorrt", "int8", "tensorrt", threads=threads),
        OrtRunner(fp16.path, "onnxruntime-fp16", "fp16", threads=threads),
    ]


def run_rounds(runners: list[Runner], batch_sizes, rounds: int, warmup: int, iterations: int) -> dict:
    """All timed calls per (engine, batch size), each engine in its own warmed block, blocks in rounds."""
    images = np.random.default_rng(1).standard_normal((max(batch_sizes), *SHAPE), dtype=np.float32)
    samples: dict[tuple[str, int], list[float]] = {}
    for round_index in range(rounds):
        for runner in runners:
            with runner:
                for batch_size in batch_sizes:
                    timed, _ = time_calls(runner, make_batch(images, batch_size), warmup, iterations, max_seconds=120.0)
                    samples.setdefault((runner.name, batch_size), []).extend(timed.tolist())
        print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr)
    return samples


def print_latency(samples: dict, runners: list[Runner], batch_sizes, macs: int) -> None:
    header = "| engine | " + " | ".join(f"b{b} median ms | b{b} vs eager | b{b} GMAC/s" for b in batch_sizes) + " |"
    print(header)
    print("|---|" + "---:|" * (3 * len(batch_sizes)))
    eager = runners[0].name
    for runner in runners:
        cells = []
        for b in batch_sizes:
            median = float(np.median(samples[(runner.name, b)]))
            speedup = float(np.median(samples[(eager, b)])) / median
            cells += [f"{median:.2f}", f"{speedup:.2f}x", f"{macs * b / median / 1e6:.1f}"]
        print(f"| {runner.name} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, few iterations, 64 calibration images")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of engine blocks (default 3)")
    parser.add_argument("--iterations", type=int, default=30, help="timed calls per engine, batch size and round")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per engine, batch size and round")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    parser.add_argument("--calib-images", type=int, default=512, help="calibration images for part 2 (default 512)")
    parser.add_argument("--no-modelopt", action="store_true", help="skip timing ModelOpt's own calibration")
    parser.add_argument("--no-latency", action="store_true", help="only part 2")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iterations, args.warmup, args.calib_images = 1, 5, 2, min(args.calib_images, 64)
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-bench-") as tmp:
        folder = Path(tmp)
        print(f"preparing {ARCH} (random weights) and {args.calib_images} calibration images ...", file=sys.stderr)
        model, folded, fp32, dataset = prepare(folder, args.calib_images, args.threads)
        macs = conv_gemm_macs(fp32.path)

        print(f"\n## INT8 quantize step: {args.calib_images} images, entropy, {args.threads} threads\n")
        seconds, calibration = time_quantize_step(fp32, dataset, folder, args.threads, not args.no_modelopt)
        for name, value in seconds.items():
            print(f"- {name}: {value:.1f} s")

        if not args.no_latency:
            runners = engines(model, folded, folder, fp32, args.threads, calibration)
            print(
                f"\n## Latency: {ARCH} {'x'.join(map(str, SHAPE))}, {macs / 1e9:.2f} GMAC/image, {args.threads} threads, "
                f"{args.rounds} rounds x {args.iterations} calls\n"
            )
            samples = run_rounds(runners, batch_sizes, args.rounds, args.warmup, args.iterations)
            print_latency(samples, runners, batch_sizes, macs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
