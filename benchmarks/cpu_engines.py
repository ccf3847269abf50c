"""CPU engines side by side: ResNet-50 at 224x224 (random weights), and the cost of making the INT8 models.

    python benchmarks/cpu_engines.py                          # the full run (several minutes)
    python benchmarks/cpu_engines.py --no-latency --no-modelopt  # part 2 only: the INT8 step against its goal
    python benchmarks/cpu_engines.py --quick                  # a smoke run: fewer iterations and calibration images
    python benchmarks/cpu_engines.py --no-latency --profile prof/   # also cProfile the statistics pass and both quantizers

Part 1, latency. Engines: PyTorch eager FP32, PyTorch with BatchNorm folded, then each ONNX model on ONNX
Runtime and on OpenVINO: FP32, INT8 for the onnxruntime target (U8S8), INT8 for the tensorrt target (S8S8),
FP16 (AutoCast). OpenVINO also in bfloat16 (`openvino-bf16`: the FP32 model at OpenVINO's default inference
precision on CPUs with bf16, shown apart because it is not FP32), and FP32 and INT8 compiled once for every
batch size (`--openvino-shapes dynamic`) against the default, one compiled model per batch size.
The peer: OpenVINO + NNCF used directly on the same FP32 ONNX, as NNCF's documentation shows
(`nncf.quantize` on the model OpenVINO read, the same calibration images, compiled with OpenVINO's defaults
and the same thread count), once as read (dynamic batch) and once reshaped to each batch size (static).
Each engine runs in its own warmed block (all batch sizes), the blocks in rounds: thread pools that spin
after work (PyTorch's OpenMP, ONNX Runtime's, OpenVINO's) steal the cores from the next engine when calls
are interleaved one by one. Printed: the median over all rounds, the speed-up over PyTorch eager, the
achieved GMAC/s (multiply-accumulates of the Conv and Gemm layers, counted from the ONNX graph), the ratio
of each INT8 engine to the peer, and the goal: our fastest INT8 engine against the faster peer variant, per
batch size (<= 1.00 means no slower). Last, what OpenVINO executes for each model (nodes of its executed
graph, compute layers by precision): the structural comparison of the INT8 recipes, which timing noise
cannot blur.

Part 2, the INT8 quantize step with N calibration images (entropy), as the build runs it: our one
statistics pass plus both quantizers (the tensorrt one in the ModelOpt worker process, which the build
starts before folding, so its imports are timed apart, and which prepares its graph during the statistics
pass), against one plain FP32 pass over the same images (the floor). Both sides are the faster of two: the
INT8 step runs twice, each time from a new copy of the FP32 ONNX (nothing cached between them), and the floor
is measured before and after it. Then each quantizer alone, from the start, and the peers: ModelOpt's own
entropy calibration (`modelopt.onnx.quantization.quantize`, which calibrates inside ONNX Runtime's
calibrator) and NNCF's own quantization (`nncf.quantize`, min-max statistics plus fast bias correction),
which part 1 runs. The goal: the whole INT8 step for both
targets at most 1.5x the floor and faster than NNCF. `--profile DIR` writes cProfile profiles of the
statistics pass and of each quantizer (run again after the timed runs, so profiling slows no timing) as
DIR/<step>.prof (for `python -m pstats`, snakeviz, ...) with the top functions in DIR/<step>.txt.

What this CPU cannot run (`openvino-bf16` without bfloat16 instructions) is left out with one line saying why.
`--arch` and `--input-size` make the smoke run small (the test of this script uses them). Numbers depend
on the machine and on what else runs on it: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import cProfile
import io
import multiprocessing
import os
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from resnet_deploy.calibration.calibrate import CalibrationSet, calibrate
from resnet_deploy.calibration.fp16 import convert_fp16
from resnet_deploy.calibration.methods import CalibrationOptions
from resnet_deploy.calibration.quantize import (
    ModelOptSession,
    captured_output,
    make_int8,
    quantize_int8,
    tensorrt_int8_meanwhile,
    write_int8,
)
from resnet_deploy.calibration.statistics import collect_statistics
from resnet_deploy.data import NpzDataset
from resnet_deploy.engines import registry
from resnet_deploy.engines.base import Runner
from resnet_deploy.engines.naming import engine_name
from resnet_deploy.engines.openvino import OpenVINOOptions, ShapeMode, executed, require_bf16
from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.errors import MissingDependency
from resnet_deploy.models import create_model, load_model, resolve_arch
from resnet_deploy.options import Target, parse_input_size
from resnet_deploy.pipeline.benchmark import make_batch, time_calls
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_and_verify

ARCH = "resnet50"
SHAPE = (3, 224, 224)
GOAL = 1.5  # the whole INT8 step for both targets: at most this many plain FP32 passes (and faster than NNCF)


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


def prepare(folder: Path, calib_images: int, threads: int, arch: str = ARCH, shape: tuple[int, int, int] = SHAPE):
    """Random-weight `arch` (ResNet-50) -> folded -> FP32 ONNX; a .npz of random calibration images."""
    torch.manual_seed(0)
    weights = folder / f"{arch}.pth"
    torch.save(create_model(resolve_arch(arch), 1000).state_dict(), weights)
    model = load_model(arch, weights, input_size=shape)
    rng = np.random.default_rng(0)
    check = rng.standard_normal((4, *shape), dtype=np.float32)
    folded, _ = fold_and_verify(model, check)
    fp32 = export_onnx(folded, model.info, check, folder / "model.fp32.onnx")
    images = rng.standard_normal((calib_images, *shape), dtype=np.float32)
    np.savez(folder / "calib.npz", images=images)
    return model, folded, fp32, NpzDataset.open(folder / "calib.npz", shape, option="--calib-data")


FLOOR = "one FP32 pass (the floor), the faster of one before and one after the INT8 step"
WORKER = "ModelOpt worker start (its imports; the build starts it before folding)"
STATISTICS = "statistics pass"
BOTH = "quantize both targets (ranges given), the tensorrt one in the worker meanwhile, as the build does"
WHOLE = "the whole INT8 step: statistics + both targets"
SLOWER_RUN = "the whole INT8 step in the slower of its two runs (not counted)"
OWN_MODELOPT = "ModelOpt's own entropy calibration (tensorrt only)"
NNCF = "NNCF's own quantization (OpenVINO IR, the peer)"


def quantize_label(target: Target) -> str:
    return f"quantize {target} alone (ranges given; all its own graph work included, nothing prepared or cached)"


def time_quantize_step(fp32, dataset, folder: Path, threads: int, with_modelopt: bool, profile: Path | None):
    """Seconds for: a plain FP32 pass, the INT8 step as the build runs it (statistics pass, each quantizer), and
    ModelOpt's and NNCF's own flows; with `profile`, cProfile files of our steps (run again, untimed)."""
    seconds: dict[str, float] = {}

    def fp32_pass() -> float:
        with OrtRunner(fp32.path, "fp32-pass", "fp32", threads=threads) as runner:
            started = time.perf_counter()
            for batch in dataset.iter_batches(8):
                runner.infer(batch.images)
            return time.perf_counter() - started

    seconds[FLOOR] = fp32_pass()  # (first in the printed order)

    image = next(iter(dataset.select([0]).iter_batches(1))).images
    with ModelOptSession() as session, tempfile.TemporaryDirectory(dir=folder) as tmp:
        started = time.perf_counter()
        session.wait_ready()
        seconds[WORKER] = time.perf_counter() - started
        # The INT8 step twice, each from its own copy of the FP32 ONNX (a new file: nothing cached from the run
        # before), the faster of the two counted, as for the floor.
        runs = [int8_step(fp32, dataset, image, session, Path(tmp), folder, threads, run) for run in (1, 2)]
        totals = [run[0][STATISTICS] + run[0][BOTH] for run in runs]
        best = runs[totals.index(min(totals))]
        seconds.update(best[0])
        calibration = best[1]
        for target in Target:  # and each alone
            started = time.perf_counter()
            quantize_int8(fp32, calibration, target, Path(tmp) / f"alone-{target}.onnx", image, session=session)
            seconds[quantize_label(target)] = time.perf_counter() - started
    # The floor is the faster of two passes, one before the INT8 step and one after it: on a shared machine one pass
    # varies by 10-20% from run to run, and the faster one is the stricter floor for the ratios.
    seconds[FLOOR] = min(seconds[FLOOR], fp32_pass())
    seconds[WHOLE] = seconds[STATISTICS] + seconds[BOTH]
    seconds[SLOWER_RUN] = max(totals)
    if profile is not None:
        profile_steps(fp32, dataset, calibration, image, folder, threads, profile)
    data = np.concatenate([b.images for b in dataset.iter_batches(64)])
    if with_modelopt:
        import modelopt.onnx.quantization as moq

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
        seconds[OWN_MODELOPT] = time.perf_counter() - started
    started = time.perf_counter()
    nncf_quantize(fp32.path, data, folder / NNCF_IR)
    seconds[NNCF] = time.perf_counter() - started
    return seconds


def int8_step(fp32, dataset, image, session, tmp: Path, folder: Path, threads: int, run: int):
    """({STATISTICS: s, BOTH: s}, calibration) of the INT8 step as the build runs it, on a fresh copy of the FP32 ONNX:
    the worker prepares its graph during the statistics pass, then both quantizers, the tensorrt one meanwhile."""
    source = tmp / f"run{run}" / fp32.path.name
    source.parent.mkdir()
    shutil.copyfile(fp32.path, source)
    fp32 = replace(fp32, path=source)
    seconds = {}
    started = time.perf_counter()
    session.prepare(fp32.path, fp32.input_name, [], image)
    calibration = calibrate(fp32, CalibrationSet.draw(dataset, len(dataset), 0), CalibrationOptions(), threads)
    seconds[STATISTICS] = time.perf_counter() - started
    started = time.perf_counter()
    with tensorrt_int8_meanwhile(fp32, calibration, [], image, False, session) as tensorrt:
        made = make_int8(fp32, calibration, Target.ONNXRUNTIME, [], image, source.parent)
        write_int8(fp32, calibration, Target.ONNXRUNTIME, made, folder / "model.int8-onnxruntime.onnx", [])
        write_int8(fp32, calibration, Target.TENSORRT, tensorrt.result(), folder / "model.int8-tensorrt.onnx", [])
    seconds[BOTH] = time.perf_counter() - started
    return seconds, calibration


def profile_steps(fp32, dataset, calibration, image: np.ndarray, folder: Path, threads: int, out: Path) -> None:
    """cProfile of the statistics pass and of each quantizer: OUT/<step>.prof, and OUT/<step>.txt (top functions).

    The tensorrt quantizer is profiled in this process: the job the ModelOpt worker would get, run directly.
    """
    from resnet_deploy.calibration import modelopt_worker
    from resnet_deploy.calibration.graph import excluded_nodes, load_onnx
    from resnet_deploy.calibration.quantize import write_trt_cache

    out.mkdir(parents=True, exist_ok=True)
    work = folder / "profiled"
    work.mkdir(exist_ok=True)
    np.save(work / "example.npy", image[:1])
    write_trt_cache(calibration, work / "calib.cache")
    job = {
        "onnx_path": str(fp32.path),
        "cache": str(work / "calib.cache"),
        "example": str(work / "example.npy"),
        "input_name": fp32.input_name,
        "nodes_to_exclude": [],
        "output_path": str(work / "model.int8-tensorrt.onnx"),
    }
    modelopt_worker.import_modelopt()  # not part of the job (the worker imports it once, at its start)
    excluded = excluded_nodes(load_onnx(fp32.path), None)
    steps = {
        "statistics": lambda: collect_statistics(fp32.path, fp32.input_name, dataset, threads),
        "quantize-onnxruntime": lambda: make_int8(fp32, calibration, Target.ONNXRUNTIME, excluded, image, work),
        "quantize-tensorrt": lambda: modelopt_worker.quantize_job(job, modelopt_worker.PreparedGraphs()),  # unprepared
    }
    for name, step in steps.items():
        profiler = cProfile.Profile()
        profiler.runcall(step)
        profiler.dump_stats(out / f"{name}.prof")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        (out / f"{name}.txt").write_text(text.getvalue(), encoding="utf-8")
        print(f"  profile of {name}: {out / name}.prof", file=sys.stderr)


def print_quantize_step(seconds: dict[str, float]) -> None:
    floor = seconds[FLOOR]
    for name, value in seconds.items():
        ratio = f" ({value / floor:.2f}x the floor)" if name in (STATISTICS, WHOLE, SLOWER_RUN, OWN_MODELOPT, NNCF) else ""
        print(f"- {name}: {value:.1f} s{ratio}")
    whole, nncf = seconds[WHOLE], seconds[NNCF]
    met = whole <= GOAL * floor and whole < nncf
    print(
        f"- goal, the whole INT8 step for both targets at most {GOAL:.2f}x one FP32 pass and faster than NNCF: "
        f"{whole / floor:.2f}x, {whole / nncf:.2f} of NNCF's time ({'met' if met else 'NOT MET'})"
    )


NNCF_IR = "model.int8-nncf.xml"


def nncf_quantize(onnx_path: Path, images: np.ndarray, xml_path: Path) -> None:
    """OpenVINO + NNCF as NNCF's documentation shows: read the FP32 ONNX, quantize with the calibration images."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    with captured_output():
        quantized = nncf.quantize(model, dataset, subset_size=len(images))
    ov.save_model(quantized, str(xml_path))


class OpenVINOPeer(Runner):
    """The peer: NNCF's OpenVINO model compiled with OpenVINO's defaults (only the thread count set).

    `static` reshapes it to each batch size before compiling (what our OpenVINO engine does by default),
    else it runs as read, with the ONNX's dynamic batch axis.
    """

    backend = "openvino"

    def __init__(self, xml_path: Path, name: str, threads: int, static: bool, shape: tuple[int, int, int] = SHAPE) -> None:
        super().__init__(name, "int8", "openvino")
        self.xml_path, self.threads, self.static, self.shape = xml_path, threads, static, shape

    def _activate(self) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._model = self._core.read_model(str(self.xml_path))
        self._requests: dict[int | None, object] = {}

    def _deactivate(self) -> None:
        self._requests, self._model, self._core = {}, None, None

    def prepare(self, batch_size: int) -> None:
        key = batch_size if self.static else None
        if key not in self._requests:
            model = self._model
            if self.static:
                model = model.clone()
                model.reshape([batch_size, *self.shape])
            compiled = self._core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": self.threads})
            self._requests[key] = compiled.create_infer_request()
            self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self.executed = executed(compiled)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.prepare(len(batch))
        return self._requests[len(batch) if self.static else None].infer({0: batch}, share_inputs=True)[0]


def engines(model, folded, folder: Path, fp32, threads: int, calibration, shape: tuple[int, int, int] = SHAPE) -> list[Runner]:
    """Every engine of part 1 this CPU can run; each one it cannot is left out with a line saying why.

    The ONNX models run on the CPU engines as a build plans them (the engine registry), plus OpenVINO with dynamic
    shapes and the NNCF peer."""
    fp16 = convert_fp16(fp32, calibration, folder / "model.fp16.onnx")
    fp32_model, int8, int8_trt, fp16_model = (
        registry.read_model(path)
        for path in (fp32.path, folder / "model.int8-onnxruntime.onnx", folder / "model.int8-tensorrt.onnx", fp16.path)
    )
    try:
        require_bf16("openvino-bf16")
        bf16 = True
    except MissingDependency as exc:  # the message ends with the hint for the CLI option
        print(f"- left out {str(exc).rsplit('; ', 1)[0]}")
        bf16 = False
    planned = registry.EngineSettings(("onnxruntime", "openvino"), threads, options=(OpenVINOOptions(bf16=bf16),))
    dynamic = registry.EngineSettings(("openvino",), threads, options=(OpenVINOOptions(shapes=ShapeMode.DYNAMIC),))

    def on_cpu(model) -> list[Runner]:
        return [registry.runner(spec) for spec in registry.plan(model, planned)]

    def with_dynamic_shapes(model, name: str) -> Runner:
        (spec,) = registry.plan(model, dynamic)
        return registry.runner(replace(spec, name=name))

    return [
        PyTorchRunner(model.module, "pytorch-eager-fp32", threads),
        PyTorchRunner(folded, "pytorch-bn-folded-fp32", threads),
        *on_cpu(fp32_model),
        with_dynamic_shapes(fp32_model, DYNAMIC_FP32),
        *on_cpu(int8),
        with_dynamic_shapes(int8, DYNAMIC_INT8),
        *on_cpu(int8_trt),
        OpenVINOPeer(folder / NNCF_IR, PEER_DYNAMIC, threads, static=False, shape=shape),
        OpenVINOPeer(folder / NNCF_IR, PEER_STATIC, threads, static=True, shape=shape),
        *on_cpu(fp16_model),
    ]


DYNAMIC_FP32 = "openvino-fp32 (dynamic shapes)"  # the default compiles per batch size: is that faster?
DYNAMIC_INT8 = "openvino-int8 (dynamic shapes)"
PEER_DYNAMIC = "peer: openvino+nncf (as read)"
PEER_STATIC = "peer: openvino+nncf (static)"


def run_rounds(
    runners: list[Runner], batch_sizes, rounds: int, warmup: int, iterations: int, shape: tuple[int, int, int] = SHAPE
) -> dict:
    """All timed calls per (engine, batch size), each engine in its own warmed block, blocks in rounds."""
    images = np.random.default_rng(1).standard_normal((max(batch_sizes), *shape), dtype=np.float32)
    samples: dict[tuple[str, int], list[float]] = {}
    for round_index in range(rounds):
        start = round_index * len(runners) // rounds  # each round starts elsewhere: no engine always follows the same one
        for runner in runners[start:] + runners[:start]:
            with runner:
                for batch_size in batch_sizes:
                    runner.prepare(batch_size)
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


def print_executed(runners: list[Runner]) -> None:
    """What OpenVINO runs for each model (its executed graph): a comparison that timing noise cannot blur."""
    print("\n## What OpenVINO executes (from its executed graph, last batch size)\n")
    print("| engine | executed nodes | compute layers by precision (u8/i8: INT8 kernels) |")
    print("|---|---:|---|")
    for runner in runners:
        graph = (
            runner.executed
            if isinstance(runner, OpenVINOPeer)
            else runner.describe().get("executed")
            if runner.backend == "openvino"
            else None
        )
        if graph:
            layers = "; ".join(
                f"{kind} {', '.join(f'{n} {p}' for p, n in sorted(counts.items()))}"
                for kind, counts in graph["compute_layers"].items()
            )
            print(f"| {runner.name} | {graph['nodes']} | {layers} |")


def print_goal(samples: dict, runners: list[Runner], batch_sizes) -> None:
    """Each OpenVINO INT8 recipe against the peer, and the goal: our fastest INT8 engine vs the faster peer variant."""
    median = {key: float(np.median(values)) for key, values in samples.items()}
    ours = [r.name for r in runners if r.precision == "int8" and not isinstance(r, OpenVINOPeer)]
    print("\n## INT8 on the CPU: ratio to OpenVINO + NNCF used directly (< 1.00: faster than the peer)\n")
    print("| engine | " + " | ".join(f"b{b} vs peer as read | b{b} vs peer static" for b in batch_sizes) + " |")
    print("|---|" + "---:|" * (2 * len(batch_sizes)))
    for name in ours:
        cells = [f"{median[(name, b)] / median[(peer, b)]:.2f}" for b in batch_sizes for peer in (PEER_DYNAMIC, PEER_STATIC)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for b in batch_sizes:
        best = min(ours, key=lambda name: median[(name, b)])
        peer = min((PEER_DYNAMIC, PEER_STATIC), key=lambda name: median[(name, b)])
        ratio = median[(best, b)] / median[(peer, b)]
        verdict = "no slower" if ratio <= 1.0 else "SLOWER"
        times = f"{best} {median[(best, b)]:.2f} ms vs {peer} {median[(peer, b)]:.2f} ms"
        print(f"- goal, batch {b}: {times}: {ratio:.2f} ({verdict})")
    static_names = (engine_name("openvino", "fp32", None), engine_name("openvino", "int8", "onnxruntime"))
    for static, dynamic in zip(static_names, (DYNAMIC_FP32, DYNAMIC_INT8)):
        ratios = ", ".join(f"b{b} {median[(static, b)] / median[(dynamic, b)]:.2f}" for b in batch_sizes)
        print(f"- {static}, static shapes (the default) / dynamic: {ratios} (< 1.00: static is faster)")


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
    parser.add_argument("--profile", type=Path, metavar="DIR", help="write cProfile profiles of part 2's steps into DIR")
    parser.add_argument("--arch", default=ARCH, help=f"the model (random weights; default {ARCH})")
    parser.add_argument("--input-size", type=parse_input_size, default=SHAPE, help="CxHxW (default 3x224x224)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iterations, args.warmup, args.calib_images = 1, 5, 2, min(args.calib_images, 64)
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    shape = tuple(args.input_size)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="resnet-deploy-bench-") as tmp:
        folder = Path(tmp)
        print(f"preparing {args.arch} (random weights) and {args.calib_images} calibration images ...", file=sys.stderr)
        model, folded, fp32, dataset = prepare(folder, args.calib_images, args.threads, args.arch, shape)
        macs = conv_gemm_macs(fp32.path)

        print(f"\n## INT8 quantize step: {args.arch}, {args.calib_images} images, entropy, {args.threads} threads\n")
        # In a child process: ModelOpt and NNCF change process-wide state when imported and run (ONNX Runtime's
        # quantizer registries, thread pools), which slowed every engine timed after them in the same process
        # by 5-20%, unevenly. The child writes the INT8 models and NNCF's IR into `folder` for part 1.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            step = pool.submit(time_quantize_step, fp32, dataset, folder, args.threads, not args.no_modelopt, args.profile)
            print_quantize_step(step.result())

        if not args.no_latency:
            calibration = calibrate(fp32, CalibrationSet.draw(dataset, len(dataset), 0), CalibrationOptions(), args.threads)
            runners = engines(model, folded, folder, fp32, args.threads, calibration, shape)
            print(
                f"\n## Latency: {args.arch} {'x'.join(map(str, shape))}, {macs / 1e9:.2f} GMAC/image, {args.threads} threads, "
                f"{args.rounds} rounds x {args.iterations} calls\n"
            )
            samples = run_rounds(runners, batch_sizes, args.rounds, args.warmup, args.iterations, shape)
            print_latency(samples, runners, batch_sizes, macs)
            print_goal(samples, runners, batch_sizes)
            print_executed(runners)
            peer = next(r for r in runners if isinstance(r, OpenVINOPeer))
            print(f"\nThe peer ran with inference precision {peer.inference_precision} (OpenVINO's default on this CPU).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
