"""`validate` and `bench`: accuracy and latency of given model files on the engines chosen here."""

from __future__ import annotations

from pathlib import Path

import click

from .. import config
from ..engines.ort import OrtOptions
from ..errors import UserError
from ..options import NUM_CLASSES, BenchmarkOptions
from .inputs import INPUT_SIZE, load_reference, log_model, open_labelled
from .options import common, engine_options, model_options, settings_options
from .tables import print_summary

# --providers and --threads as validate and bench show them: without help
UNEXPLAINED_RUNTIME = (*(s.but(help=None) for s in OrtOptions.SETTINGS), config.THREADS.but(help=None))


def _runners(
    onnx_paths: tuple[Path, ...],
    engine_paths: tuple[Path, ...],
    providers: str,
    threads: int | None,
    options,
    batch_sizes: tuple[int, ...],
):
    """Runners for --onnx files on each engine of --engines and TensorRT runners for --engine files (at least one)."""
    from ..config import check_engines, engine_options_of, parse_engines
    from ..engines import registry
    from ..engines.openvino import OpenVINOOptions
    from ..engines.ort import OrtOptions, parse_providers
    from ..isa import host_isa
    from ..isa import mismatch as cpu_mismatch
    from ..pipeline.kernels import made_for_cpu

    if not onnx_paths and not engine_paths:
        raise UserError("give at least one --onnx model or --engine file")
    chain = parse_providers(providers)
    engines = parse_engines(options.get("engines"))
    openvino = OpenVINOOptions.from_values(options)
    check_engines(engines, openvino)
    settings = registry.EngineSettings(
        tuple(e.value for e in engines),
        threads,
        tuple(batch_sizes),
        options=(OrtOptions(chain), openvino, *engine_options_of(options)),
    )
    specs = []
    host = host_isa()
    for path in onnx_paths:
        model = registry.read_model(path)
        mismatch = cpu_mismatch(made_for_cpu(path), host, str(path))
        if mismatch:
            click.echo(f"warning: {mismatch}", err=True)
        specs += registry.plan(model, settings)
    specs += [registry.kind("tensorrt").built(path, settings) for path in engine_paths]
    return [registry.runner(spec) for spec in specs]


def _runner_path(runner) -> str:
    return str(getattr(runner, "onnx_path", None) or getattr(runner, "engine_path", ""))


def _recorded_preprocess(runner):
    """The preprocessing an ONNX model's sidecar records (the one it was trained with), or None without a sidecar."""
    from ..artifacts import OnnxArtifact, sidecar_path
    from ..data import Preprocess

    path = getattr(runner, "onnx_path", None)
    if path is None or not sidecar_path(path).is_file():
        return None
    try:
        return Preprocess.from_dict(OnnxArtifact.read(path).preprocess)
    except UserError:  # a stale or foreign sidecar: timing needs only inputs of the right size
        return None


def _input_shape(runner) -> tuple[int, int, int]:
    from ..engines.ort import onnx_input_shape

    chw = getattr(runner, "chw", None)
    return tuple(chw) if chw else onnx_input_shape(runner.onnx_path)


@click.command(
    epilog="\b\nExample:\n  resnet-deploy validate --arch resnet18 --weights w.pth --onnx out/model.fp32.onnx --val-data val/"
)
@click.option("--arch", help="Architecture of the PyTorch reference (a hub folder names its own).")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help="Reference weights (file or hub folder).")
@click.option(
    "--onnx",
    "onnx_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="ONNX model(s) to validate on ONNX Runtime (repeatable).",
)
@click.option("--engine", "engine_paths", multiple=True, type=click.Path(path_type=Path), help="TensorRT engine(s) (repeatable).")
@click.option("--val-data", required=True, type=click.Path(path_type=Path), help="Validation images or .npz.")
@settings_options(NUM_CLASSES.but(help=None), INPUT_SIZE)
@model_options
@settings_options(*UNEXPLAINED_RUNTIME)
@engine_options
@settings_options(config.BATCH_SIZE.but(help=None))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@common
def validate(
    progress,
    arch,
    weights,
    onnx_paths,
    engine_paths,
    val_data,
    num_classes,
    input_size,
    providers,
    threads,
    batch_size,
    json_out,
    **options,
) -> int:
    """Accuracy of engines against the PyTorch reference (and labels, when the data has them)."""
    from ..engines import registry
    from ..engines.ort import describe_onnx, exact_runner, onnx_input_shape
    from ..files import write_json_atomic
    from ..isa import host_isa
    from ..pipeline.kernels import broken_model, kernel_loss, made_for_cpu
    from ..pipeline.validate import validate_all

    model = load_reference(arch, weights, num_classes, input_size, options)
    for path in onnx_paths:
        shape, size = onnx_input_shape(path), tuple(model.preprocess.input_size)
        if shape != size:
            want = "x".join(map(str, shape))
            raise UserError(f"--onnx {path} takes {want} images, not {'x'.join(map(str, size))}; pass --input-size {want}")
    dataset = open_labelled(val_data, model, "--val-data")
    model = model.name_classes_after(dataset, "--val-data")
    runners = _runners(onnx_paths, engine_paths, providers, threads, options, (batch_size,))
    log_model(progress, model)
    exact = {  # each reduced-precision file under its exact ONNX semantics: the model's own accuracy
        str(path): exact_runner(path, precision, target, threads)
        for path in onnx_paths
        for precision, target in [describe_onnx(path)]
        if precision != "fp32"
    }
    accuracies = validate_all(
        registry.reference_runner(model.module, weights, threads), [*runners, *exact.values()], dataset,
        model.num_classes, batch_size, progress,
    )  # fmt: skip
    accuracies, exact_accuracies = accuracies[: len(runners)], dict(zip(exact, accuracies[len(runners) :]))
    host = host_isa()
    rows = []
    for r, a in zip(runners, accuracies):
        reference = exact_accuracies.get(_runner_path(r))
        loss = None if reference is None else kernel_loss(r.name, r.target, made_for_cpu(_runner_path(r)), a, reference, host)
        rows.append({
            "name": r.name,
            "backend": r.backend,
            "precision": r.precision,
            "target": r.target,
            "path": _runner_path(r),
            "accuracy": a.as_dict(),
            "reference_accuracy": None if reference is None else reference.as_dict(),
            "kernel_loss": loss,
            "latency": [],
        })  # fmt: skip
    print_summary({"reference": {"name": "pytorch-fp32", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"model": model.info.as_dict(), "engines": rows})
    broken = [line for path, a in exact_accuracies.items() if (line := broken_model(path, a))]
    for line in broken:
        click.echo(f"FAILED {line}", err=True)
    return 1 if broken or any(not a.passed for a in accuracies) else 0


@click.command(
    epilog="\b\nExample:\n  resnet-deploy bench --onnx out/model.fp32.onnx --arch resnet18 --weights w.pth --batch-sizes 1,8,32"
)
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(path_type=Path), help="ONNX model(s) to time (repeatable).")
@click.option(
    "--engine", "engine_paths", multiple=True, type=click.Path(path_type=Path), help="TensorRT engine(s) to time (repeatable)."
)
@click.option("--arch", help="Also time the PyTorch reference (needs --weights).")
@click.option("--weights", type=click.Path(path_type=Path), help="Weights of the PyTorch reference (file or hub folder).")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to time on (default: random inputs).")
@model_options
@settings_options(*UNEXPLAINED_RUNTIME)
@engine_options
@settings_options(*(s.but(help=None) for s in BenchmarkOptions.SETTINGS))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@common
def bench(
    progress,
    onnx_paths,
    engine_paths,
    arch,
    weights,
    data,
    providers,
    threads,
    batch_sizes,
    warmup,
    iterations,
    json_out,
    **model_and_engine_options,
) -> int:
    """Latency percentiles and throughput of engines (and the PyTorch reference), each in its own block."""
    import dataclasses

    import numpy as np

    from ..data import Preprocess, first_images, open_dataset
    from ..engines import registry
    from ..files import write_json_atomic
    from ..models import ModelOptions
    from ..pipeline.benchmark import benchmark_all

    options = BenchmarkOptions.from_values({"batch_sizes": batch_sizes, "warmup": warmup, "iterations": iterations})
    runners = _runners(onnx_paths, engine_paths, providers, threads, model_and_engine_options, options.batch_sizes)
    shape = _input_shape(runners[0])
    if arch and not weights:
        raise UserError("--arch needs --weights (they add the PyTorch reference); give both or neither")
    if weights is not None and not arch and not Path(weights).is_dir():
        raise UserError("--weights needs --arch (they add the PyTorch reference) unless it is a hub folder")
    preprocess = _recorded_preprocess(runners[0]) if data is not None else None  # the model's own, from its sidecar
    if weights is not None:
        model = load_reference(arch, weights, None, "x".join(map(str, shape)), model_and_engine_options)
        log_model(progress, model)
        runners.insert(0, registry.reference_runner(model.module, weights, threads))
        preprocess = preprocess or model.preprocess
    if data is not None:
        given = ModelOptions.from_values(model_and_engine_options).preprocess.given()  # --mean, ... override the recorded ones
        preprocess = dataclasses.replace(preprocess or Preprocess(input_size=shape), **given)
        images = first_images(open_dataset(data, preprocess, option="--data"), max(options.batch_sizes))
    else:
        images = np.random.default_rng(0).standard_normal((max(options.batch_sizes), *shape), dtype=np.float32)
    latencies = benchmark_all(runners, images, options, progress)
    rows = [
        {
            "name": r.name,
            "backend": r.backend,
            "precision": r.precision,
            "target": r.target,
            "accuracy": None,
            "latency": [x.as_dict() for x in lat],
            "details": r.describe(),
        }
        for r, lat in zip(runners, latencies)
    ]
    print_summary({"reference": {"name": "", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"engines": rows})
    return 0
