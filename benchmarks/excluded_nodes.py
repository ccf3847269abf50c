"""What each node left in higher precision costs: ONNX Runtime INT8 (onnxruntime target) with 0, 1, 2, 4, 8 nodes
kept in FP32, ResNet-50 at 224x224 (random weights), batch 1, side by side in one run.

    python benchmarks/excluded_nodes.py            # the full run (a few minutes)
    python benchmarks/excluded_nodes.py --quick    # a smoke run: one round, few calls
    # --arch and --input-size make the smoke run small (the test of this script uses them)

Which nodes: the most sensitive first, as `resnet-deploy layers` and the mixed-precision search rank them
(the SQNR each quantized node adds, measured on --sqnr-images calibration images; lowest first), so each
row keeps the nodes a search would keep first. Every model comes from one calibration (entropy, the same
ranges: no new statistics pass per row), quantized with those nodes excluded; excluded nodes read the FP32
activations and weights (see quantize.read_float_inputs). The FP32 model is timed too, as the ceiling.

Each model runs in its own warmed block, the blocks in rounds (thread pools that spin after work steal
the cores from the next engine when calls interleave one by one). Printed: the median over all rounds and
the ratio to the fully quantized model. Numbers depend on the machine and on what else runs on it: run
on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import cpu_engines
import numpy as np
import torch
from cpu_engines import ARCH, SHAPE, prepare

from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
from resnet_deploy.calibration.graph import load_onnx, module_path, quantized_nodes
from resnet_deploy.calibration.methods import CalibrationOptions
from resnet_deploy.calibration.quantize import make_int8
from resnet_deploy.calibration.sensitivity import node_errors, ranked_by_sqnr
from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.options import Target, parse_input_size

COUNTS = (0, 1, 2, 4, 8)
FP32 = "onnxruntime-fp32"  # the ceiling: the FP32 model on the same engine


def models(fp32, dataset, folder: Path, threads: int, sqnr_images: int) -> tuple[list[tuple[str, Path, list[str]]], dict]:
    """(name, path, nodes kept in FP32) per count, from one calibration; and node -> (op type, module)."""
    calibration = calibrate(fp32, CalibrationSet.draw(dataset, len(dataset), 0), CalibrationOptions(), threads)
    example = next(iter(dataset.iter_batches(1))).images
    full = make_int8(fp32, calibration, Target.ONNXRUNTIME, [], example, folder / "int8-0")["fp32"]
    errors = node_errors(fp32.path, full, fp32.input_name, dataset, images=sqnr_images, threads=threads)
    ranked = ranked_by_sqnr(errors, quantized_nodes(load_onnx(full)))
    source = {n.name: n for n in load_onnx(fp32.path).graph.node}
    about = {
        n: (source[n].op_type, module_path(source[n]) or "", errors[n].sqnr_db if n in errors else float("nan"))
        for n in ranked[: max(COUNTS)]
    }
    made = [(FP32, fp32.path, ["(all)"])]
    for count in COUNTS:
        kept = ranked[:count]
        if kept:
            path = make_int8(fp32, calibration, Target.ONNXRUNTIME, kept, example, folder / f"int8-{count}")["fp32"]
        made.append((f"int8, {count} in fp32", path if kept else full, kept))
    return made, about


def run_rounds(made, threads: int, rounds: int, warmup: int, iterations: int, shape=SHAPE) -> dict[str, list[float]]:
    """cpu_engines.run_rounds at batch 1 over one ONNX Runtime runner per model: name -> timed calls (ms)."""
    runners = [
        OrtRunner(path, name, "fp32", threads=threads)
        if name == FP32
        else OrtRunner(path, name, "int8", "onnxruntime", threads=threads)
        for name, path, _ in made
    ]
    timed_calls = cpu_engines.run_rounds(runners, (1,), rounds, warmup, iterations, shape)
    return {name: timed for (name, _), timed in timed_calls.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, few calls, 16 calibration images")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of model blocks (default 3)")
    parser.add_argument("--iterations", type=int, default=50, help="timed calls per model and round (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up calls per model and round (default 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every model")
    parser.add_argument("--calib-images", type=int, default=128, help="calibration images (random; default 128)")
    parser.add_argument("--sqnr-images", type=int, default=8, help="images the SQNR ranking runs on (default 8)")
    parser.add_argument("--arch", default=ARCH, help=f"the model (random weights; default {ARCH})")
    parser.add_argument("--input-size", type=parse_input_size, default=SHAPE, help="CxHxW (default 3x224x224)")
    args = parser.parse_args()
    shape = tuple(args.input_size)
    if args.quick:
        args.rounds, args.iterations, args.warmup, args.calib_images, args.sqnr_images = 1, 5, 2, 16, 4
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-bench-") as tmp:
        folder = Path(tmp)
        print(f"preparing {args.arch} (random weights) and {args.calib_images} calibration images ...", file=sys.stderr)
        _, _, fp32, dataset = prepare(folder, args.calib_images, args.threads, args.arch, shape)
        made, about = models(fp32, dataset, folder, args.threads, args.sqnr_images)
        samples = run_rounds(made, args.threads, args.rounds, args.warmup, args.iterations, shape)

    full = float(np.median(samples["int8, 0 in fp32"]))
    print(
        f"\n## {args.arch} {'x'.join(map(str, shape))}, ONNX Runtime CPU, batch 1, {args.threads} threads, "
        f"{args.rounds} rounds x {args.iterations} calls\n"
    )
    print("| model | nodes kept in FP32 | median ms | vs full INT8 |")
    print("|---|---|---:|---:|")
    for name, _, kept in made:
        median = float(np.median(samples[name]))
        label = "all" if name == FP32 else (f"the {len(kept)} most sensitive" if kept else "none")
        print(f"| {name} | {label} | {median:.2f} | {median / full:.2f}x |")
    print("\nNodes by sensitivity (SQNR each adds, lowest first):\n")
    for rank, (node, (op, module, sqnr)) in enumerate(about.items(), 1):
        print(f"{rank}. {node} ({op}, {module}): {sqnr:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
