"""The INT8 recipes for the CPU side by side: what each costs in accuracy on this CPU, and in speed.

    python benchmarks/int8_recipes.py           # the full run (a few minutes)
    python benchmarks/int8_recipes.py --quick   # a smoke run: ResNet-18 at 32x32 for the latency part, few calls

The onnxruntime-target model exists in three weight recipes (activations uint8 asymmetric in all of them):
int8 (8 bits, symmetric per channel: what `--cpu vnni` makes), int8-7bit (ONNX Runtime's `reduce_range`, weights
on [-64, 64]: what `--cpu no-vnni` makes) and uint8 (asymmetric per channel: U8U8, ONNX Runtime's other remedy
for CPUs without VNNI). Beside them, the tensorrt-target model (S8S8).

Part 1, accuracy: the digits ResNet-18 (trained here, a few seconds; or a trained one given with --digits DIR),
its 449 validation digits; each model's top-1 agreement with PyTorch as ONNX Runtime runs it (fused integer
kernels: what this CPU's instructions compute), as OpenVINO runs it, and under the model's exact ONNX semantics
(ONNX Runtime, graph optimizations off: the number that does not depend on the CPU).

Part 2, latency: ResNet-50 at 224x224 (random weights), batch 1 and 8, each recipe on ONNX Runtime and on
OpenVINO, and the peer, OpenVINO + NNCF (`nncf.quantize` on the same FP32 ONNX; static shapes). Each engine in its
own warmed block, blocks in rounds (cpu_engines.run_rounds). Then the ratios to the 8-bit recipe: the 7-bit
one should cost nothing (the same kernels; goal: within 10% at batch 1).

The CPU's INT8 instruction sets are printed first: the accuracy of part 1 depends on them, by design.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from cpu_engines import NNCF_IR, OpenVINOPeer, nncf_quantize, prepare, run_rounds

from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
from resnet_deploy.calibration.methods import CalibrationOptions
from resnet_deploy.calibration.quantize import ModelOptSession, OrtWeights, make_int8, quantize_int8
from resnet_deploy.data import open_dataset
from resnet_deploy.engines.openvino import OpenVINOOptions, OpenVINORunner
from resnet_deploy.engines.ort import OrtRunner, exact_runner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.examples import digits
from resnet_deploy.isa import host_isa
from resnet_deploy.models import load_model
from resnet_deploy.options import Target, parse_input_size
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_and_verify
from resnet_deploy.pipeline.validate import validate_all

TENSORRT = "tensorrt target (S8S8)"
GOAL_7BIT = 1.10  # the 7-bit recipe at most this many times the 8-bit one's median latency at batch 1


def make_models(fp32, calibration, image: np.ndarray, folder: Path, session: ModelOptSession) -> dict[str, Path]:
    """The three onnxruntime-target recipes and the tensorrt-target model (in `session`'s ModelOpt worker), from the
    same ranges."""
    models = {}
    for weights in OrtWeights:
        made = make_int8(fp32, calibration, Target.ONNXRUNTIME, [], image, folder / f"int8-{weights}", weights=weights)
        models[f"onnxruntime target, weights {weights}"] = made["fp32"]
    tensorrt = folder / "model.int8-tensorrt.onnx"
    models[TENSORRT] = quantize_int8(fp32, calibration, Target.TENSORRT, tensorrt, image, session=session)[0].path
    return models


def accuracy_part(folder: Path, threads: int, epochs: int, session: ModelOptSession, trained: Path | None) -> None:
    root = trained or digits.make_workload(folder / "digits", epochs=epochs).root
    model = load_model(digits.ARCH, root / "weights.pth", input_size=digits.INPUT_SIZE)
    val = open_dataset(root / "val", model.preprocess)
    calib = open_dataset(root / "calib", model.preprocess, option="--calib-data")
    check = next(iter(val.iter_batches(8))).images
    folded, _ = fold_and_verify(model, check)
    fp32 = export_onnx(folded, model.info, check, folder / "digits.fp32.onnx")
    calibration = calibrate(fp32, CalibrationSet.draw(calib, len(calib), 0), CalibrationOptions(), threads)
    models = make_models(fp32, calibration, check[:1], folder, session)
    ov = OpenVINOOptions()
    ways = {
        "ONNX Runtime as run here": lambda path, i: OrtRunner(path, f"ort-{i}", "int8", threads=threads),
        "OpenVINO as run here": lambda path, i: OpenVINORunner(path, f"ov-{i}", "int8", threads=threads, options=ov),
        "exact Q/DQ semantics": lambda path, i: exact_runner(path, "int8", None, threads),
    }
    runners = [way(path, i) for i, path in enumerate(models.values()) for way in ways.values()]
    results = validate_all(PyTorchRunner(model.module, "pytorch", threads), runners, val, model.num_classes)
    print(f"\n## Part 1: top-1 agreement with PyTorch, digits ResNet-18, {len(val)} validation images\n")
    print("| model | " + " | ".join(ways) + " |")
    print("|---|" + "---:|" * len(ways))
    for i, name in enumerate(models):
        cells = [f"{results[i * len(ways) + j].top1_agreement * 100:.2f}%" for j in range(len(ways))]
        print(f"| {name} | " + " | ".join(cells) + " |")


def latency_part(folder: Path, args, session: ModelOptSession) -> None:
    shape = parse_input_size(args.input_size)
    _, _, fp32, calib = prepare(folder, args.calib_images, args.threads, args.arch, shape)
    calibration = calibrate(fp32, CalibrationSet.draw(calib, len(calib), 0), CalibrationOptions(), args.threads)
    image = next(iter(calib.iter_batches(1))).images
    models = make_models(fp32, calibration, image, folder, session)
    images = np.concatenate([b.images for b in calib.iter_batches(64)])
    nncf_quantize(fp32.path, images, folder / NNCF_IR)
    runners = []
    for name, path in models.items():
        runners.append(OrtRunner(path, f"onnxruntime: {name}", "int8", threads=args.threads))
        runners.append(OpenVINORunner(path, f"openvino: {name}", "int8", threads=args.threads, options=OpenVINOOptions()))
    peer = OpenVINOPeer(folder / NNCF_IR, "peer: openvino+nncf (static)", args.threads, static=True, shape=shape)
    runners.append(peer)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    samples = run_rounds(runners, batch_sizes, args.rounds, args.warmup, args.iterations, shape)
    median = {key: float(np.median(values)) for key, values in samples.items()}
    print(f"\n## Part 2: latency, {args.arch} {args.input_size}, {args.threads} threads, median ms\n")
    print("| engine | " + " | ".join(f"b{b} ms | b{b} vs 8-bit" for b in batch_sizes) + " |")
    print("|---|" + "---:|" * (2 * len(batch_sizes)))
    for runner in runners:
        backend = "openvino" if runner is peer else runner.name.split(":")[0]  # the peer against OpenVINO's 8-bit
        eight = f"{backend}: onnxruntime target, weights {OrtWeights.INT8}"
        cells = []
        for b in batch_sizes:
            cells += [f"{median[(runner.name, b)]:.2f}", f"{median[(runner.name, b)] / median[(eight, b)]:.2f}"]
        print(f"| {runner.name} | " + " | ".join(cells) + " |")
    b = batch_sizes[0]
    for backend in ("onnxruntime", "openvino"):
        seven = median[(f"{backend}: onnxruntime target, weights {OrtWeights.INT8_7BIT}", b)]
        eight = median[(f"{backend}: onnxruntime target, weights {OrtWeights.INT8}", b)]
        met = "met" if seven <= GOAL_7BIT * eight else "NOT MET"
        goal = f"the 7-bit recipe at most {GOAL_7BIT:.2f}x the 8-bit one"
        print(f"- goal, {backend}, batch {b}: {goal}: {seven / eight:.2f}x ({met})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ResNet-18 at 32x32, 1 round, few calls, 1 epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--calib-images", type=int, default=128, help="random calibration images for part 2")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", default="3x224x224")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of the digits model (part 1)")
    parser.add_argument(
        "--digits", type=Path, help="part 1 on this trained digits folder (python -m resnet_deploy.examples.digits --out DIR)"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iterations, args.warmup, args.calib_images, args.epochs = 1, 2, 1, 8, 1
        args.arch, args.input_size, args.batch_sizes = "resnet18", "3x32x32", "1,2"
    isa = host_isa()
    print(f"# INT8 recipes on this CPU: {isa.summary()}")
    # one ModelOpt worker for both parts' tensorrt-target models (importing ModelOpt takes seconds)
    with tempfile.TemporaryDirectory(prefix="int8-recipes-") as tmp, ModelOptSession() as session:
        accuracy_part(Path(tmp), args.threads, args.epochs, session, args.digits)
        latency_part(Path(tmp), args, session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
