"""The `resnet-deploy` command line. The only module that knows about click, terminals and exit codes."""

from __future__ import annotations

import functools
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import ResnetDeployError, UserError

EPILOG_BUILD = """\b
Example:
  resnet-deploy build --arch resnet18 --weights weights.pth --input-size 3x32x32 \\
      --calib-data data/calib --val-data data/val --precision fp32 --out out/
"""


def _common(fn: Callable[..., int | None]) -> Callable[..., None]:
    """--quiet/--debug on every command; errors -> one line on stderr and their exit code."""

    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or status lines on stderr.")
    @click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool, debug: bool, **kwargs: Any) -> None:
        from .progress import Progress, RichProgress

        progress = Progress() if quiet else RichProgress()
        try:
            with progress:
                code = fn(*args, progress=progress, **kwargs)
        except ResnetDeployError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: no output was left half written", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure still gets one line
            if debug:
                traceback.print_exc()
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            click.echo(f"internal error: {type(exc).__name__}: {detail} (rerun with --debug and report it)", err=True)
            sys.exit(1)
        sys.exit(code or 0)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="resnet-deploy")
def cli() -> None:
    """Trained ResNet weights -> BN-folded ONNX -> validated, timed inference engines."""


# -------------------------------------------------------------------------------------------- build


@cli.command(epilog=EPILOG_BUILD)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file of these options (flags override).")
@click.option("--arch", help="ResNet-family architecture (timm or torchvision name, e.g. resnet50).")
@click.option("--weights", type=click.Path(path_type=Path), help="state_dict: .pth/.pt or .safetensors.")
@click.option("--val-data", type=click.Path(path_type=Path), help="Validation images (ImageFolder or flat) or .npz.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibration images or .npz (INT8; also used for checks).")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder.")
@click.option("--num-classes", type=int, help="Classifier outputs (default: from the weights).")
@click.option("--input-size", help="CxHxW, e.g. 3x224x224 (default: the arch's).")
@click.option("--precision", default="fp32", show_default=True, help="Comma-separated: fp32, fp16, int8.")
@click.option("--providers", default="cpu", show_default=True, help="ONNX Runtime execution providers: cpu, cuda, tensorrt.")
@click.option("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime (default: all cores).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Batch size for validation.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to benchmark.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Warm-up calls per batch size.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed calls per batch size.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
@_common
def build(progress, config_file: Path | None, **options: Any) -> int:
    """Run every stage: load, fold BN, export ONNX, build engines, validate against PyTorch, benchmark."""
    from .pipeline.build import build as run_build

    ctx = click.get_current_context()
    config = _build_config(ctx, config_file, options)
    report = run_build(config, progress)
    _print_summary(report.as_dict())
    for failure in report.failures:
        click.echo(f"FAILED {failure}", err=True)
    click.echo(f"report: {config.out / 'report.json'}, {config.out / 'report.md'}")
    return report.return_code


def _build_config(ctx: click.Context, config_file: Path | None, options: dict[str, Any]):
    from .config import (
        LIMITS,
        PATH_KEYS,
        BenchmarkOptions,
        BuildConfig,
        Precision,
        check_range,
        load_toml_options,
        parse_enum_list,
        parse_input_size,
        parse_int_list,
    )
    from .engines.ort import parse_providers

    if config_file is not None:
        from_file = load_toml_options(config_file)
        for key, value in from_file.items():
            if key not in options:
                raise UserError(f"config file {config_file}: key {key!r} has no `build` option yet; remove it")
            if ctx.get_parameter_source(key) in (click.core.ParameterSource.DEFAULT, None):
                options[key] = Path(value) if key in PATH_KEYS else value
    missing = [f"--{k.replace('_', '-')}" for k in ("arch", "weights", "val_data", "out") if not options.get(k)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (give them as options or in --config)")
    for key in LIMITS:
        if options.get(key) is not None:
            check_range(key, options[key], f"--{key.replace('_', '-')}")
    precisions = parse_enum_list(Precision, options["precision"], "--precision")
    unsupported = [p for p in precisions if p is not Precision.FP32]
    if unsupported:
        raise UserError(f"--precision {','.join(map(str, unsupported))} is not available yet; use --precision fp32")
    return BuildConfig(
        arch=options["arch"],
        weights=Path(options["weights"]),
        val_data=Path(options["val_data"]),
        out=Path(options["out"]),
        calib_data=Path(options["calib_data"]) if options.get("calib_data") else None,
        num_classes=options.get("num_classes"),
        input_size=parse_input_size(options["input_size"]) if options.get("input_size") else None,
        precisions=precisions,
        providers=parse_providers(options["providers"]),
        threads=options.get("threads"),
        batch_size=options["batch_size"],
        opset=options.get("opset"),
        benchmark=BenchmarkOptions(
            batch_sizes=parse_int_list(options["batch_sizes"], "--batch-sizes"),
            warmup=options["warmup"],
            iterations=options["iterations"],
        ),
        force=options["force"],
    )


# ------------------------------------------------------------------------------------ single stages


def _check_images(data: Path | None, preprocess, count: int = 32):
    """Real images for a stage check (from --data), else seeded random inputs, with a note on stderr."""
    import numpy as np

    from .data import first_images, open_dataset

    if data is not None:
        return first_images(open_dataset(data, preprocess, option="--data"), count)
    click.echo(f"note: no --data given; checking on {count} random inputs instead of real images", err=True)
    rng = np.random.default_rng(0)
    return rng.standard_normal((count, *preprocess.input_size), dtype=np.float32)


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"--out {path} already exists; pass --force to replace it, or choose another path")


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy fold --arch resnet50 --weights w.pth --data val/ --out model.folded.safetensors"
)
@click.option("--arch", required=True, help="ResNet-family architecture.")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help="state_dict: .pth/.pt or .safetensors.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folded model (.safetensors + .json sidecar).")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to verify the folding on.")
@click.option("--num-classes", type=int, help="Classifier outputs (default: from the weights).")
@click.option("--input-size", help="CxHxW (default: the arch's).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@_common
def fold(
    progress, arch: str, weights: Path, out: Path, data: Path | None, num_classes: int | None, input_size: str | None, force: bool
) -> int:
    """Fold every Conv->BatchNorm pair and verify the folded model against the original."""
    from .config import parse_input_size
    from .models import load_model
    from .pipeline.fold import fold_and_verify, save_folded

    _refuse_existing(out, force)
    model = load_model(arch, weights, num_classes, parse_input_size(input_size) if input_size else None)
    images = _check_images(data, model.preprocess)
    gm, result = fold_and_verify(model, images)
    save_folded(gm, model, result, out)
    click.echo(
        f"folded {result.folded} BatchNorm layers, {len(result.remaining)} remain; "
        f"max abs diff {result.parity.max_abs_diff:.3g} (relative {result.parity.max_rel_diff:.3g}) -> {out}"
    )
    for remaining in result.remaining:
        click.echo(f"  kept {remaining.name}: {remaining.reason}")
    return 0


@cli.command(epilog="\b\nExample:\n  resnet-deploy export --folded model.folded.safetensors --data val/ --out model.fp32.onnx")
@click.option("--folded", required=True, type=click.Path(path_type=Path), help="Output of `resnet-deploy fold`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz for the parity check.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@_common
def export(progress, folded: Path, out: Path, data: Path | None, opset: int | None, force: bool) -> int:
    """Export a folded model to ONNX (dynamic batch), check it, and verify it on ONNX Runtime."""
    from .artifacts import FoldedModelArtifact
    from .pipeline.export import export_onnx
    from .pipeline.fold import load_folded

    _refuse_existing(out, force)
    artifact = FoldedModelArtifact.read(folded)
    info = artifact.info()
    images = _check_images(data, info.preprocess)
    module = load_folded(artifact)
    onnx_artifact = export_onnx(module, info, images, out, opset, artifact.fold)
    parity = onnx_artifact.details["parity"]
    click.echo(f"exported opset {onnx_artifact.opset}; ONNX Runtime max abs diff {parity['max_abs_diff']:.3g} -> {out}")
    return 0


def _onnx_runners(paths: tuple[Path, ...], providers: str, threads: int | None):
    from .engines.ort import OrtRunner, describe_onnx, parse_providers
    from .pipeline.report import engine_name

    runners = []
    for path in paths:
        precision, target = describe_onnx(path)
        runners.append(
            OrtRunner(path, engine_name("onnxruntime", precision, target), precision, target, parse_providers(providers), threads)
        )
    return runners


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy validate --arch resnet18 --weights w.pth --onnx out/model.fp32.onnx --val-data val/"
)
@click.option("--arch", required=True, help="Architecture of the PyTorch reference.")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help="Reference weights.")
@click.option(
    "--onnx",
    "onnx_paths",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Engine(s) to validate (repeatable).",
)
@click.option("--val-data", required=True, type=click.Path(path_type=Path), help="Validation images or .npz.")
@click.option("--num-classes", type=int)
@click.option("--input-size", help="CxHxW (default: the arch's).")
@click.option("--providers", default="cpu", show_default=True)
@click.option("--threads", type=int)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@_common
def validate(
    progress, arch, weights, onnx_paths, val_data, num_classes, input_size, providers, threads, batch_size, json_out
) -> int:
    """Accuracy of engines against the PyTorch reference (and labels, when the data has them)."""
    from .artifacts import write_json_atomic
    from .config import parse_input_size
    from .data import open_dataset
    from .engines.ort import onnx_input_shape
    from .engines.pytorch import PyTorchRunner
    from .models import load_model
    from .pipeline.validate import validate_all

    model = load_model(arch, weights, num_classes, parse_input_size(input_size) if input_size else None)
    for path in onnx_paths:
        shape, size = onnx_input_shape(path), tuple(model.preprocess.input_size)
        if shape != size:
            want = "x".join(map(str, shape))
            raise UserError(f"--onnx {path} takes {want} images, not {'x'.join(map(str, size))}; pass --input-size {want}")
    dataset = open_dataset(val_data, model.preprocess)
    runners = _onnx_runners(onnx_paths, providers, threads)
    accuracies = validate_all(
        PyTorchRunner(model.module, threads=threads), runners, dataset, model.num_classes, batch_size, progress
    )
    rows = [
        {
            "name": r.name,
            "precision": r.precision,
            "target": r.target,
            "path": str(r.onnx_path),
            "accuracy": a.as_dict(),
            "latency": [],
        }
        for r, a in zip(runners, accuracies)
    ]
    _print_summary({"reference": {"name": "pytorch-fp32", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"model": model.info.as_dict(), "engines": rows})
    return 1 if any(not a.passed for a in accuracies) else 0


@cli.command(
    epilog="\b\nExample:\n  resnet-deploy bench --onnx out/model.fp32.onnx --arch resnet18 --weights w.pth --batch-sizes 1,8,32"
)
@click.option(
    "--onnx", "onnx_paths", required=True, multiple=True, type=click.Path(path_type=Path), help="Engine(s) to time (repeatable)."
)
@click.option("--arch", help="Also time the PyTorch reference (needs --weights).")
@click.option("--weights", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to time on (default: random inputs).")
@click.option("--providers", default="cpu", show_default=True)
@click.option("--threads", type=int)
@click.option("--batch-sizes", default="1,8", show_default=True)
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iterations", type=int, default=50, show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON.")
@_common
def bench(progress, onnx_paths, arch, weights, data, providers, threads, batch_sizes, warmup, iterations, json_out) -> int:
    """Latency percentiles and throughput of engines (and the PyTorch reference), each in its own block."""
    import numpy as np

    from .artifacts import write_json_atomic
    from .config import BenchmarkOptions, parse_int_list
    from .data import Preprocess, first_images, open_dataset
    from .engines.ort import onnx_input_shape
    from .engines.pytorch import PyTorchRunner
    from .models import load_model
    from .pipeline.benchmark import benchmark_all

    options = BenchmarkOptions(parse_int_list(batch_sizes, "--batch-sizes"), warmup, iterations)
    runners = _onnx_runners(onnx_paths, providers, threads)
    if bool(arch) != bool(weights):
        raise UserError("--arch and --weights go together (they add the PyTorch reference); give both or neither")
    if arch:
        model = load_model(arch, weights)
        runners.insert(0, PyTorchRunner(model.module, threads=threads))
    shape = onnx_input_shape(onnx_paths[0])
    if data is not None:
        images = first_images(open_dataset(data, Preprocess(input_size=shape), option="--data"), max(options.batch_sizes))
    else:
        images = np.random.default_rng(0).standard_normal((max(options.batch_sizes), *shape), dtype=np.float32)
    latencies = benchmark_all(runners, images, options, progress)
    rows = [
        {"name": r.name, "precision": r.precision, "target": r.target, "accuracy": None, "latency": [x.as_dict() for x in lat]}
        for r, lat in zip(runners, latencies)
    ]
    _print_summary({"reference": {"name": "", "latency": []}, "engines": rows})
    if json_out:
        write_json_atomic(json_out, {"engines": rows})
    return 0


# ------------------------------------------------------------------------------------------ output


def _print_summary(report: dict[str, Any]) -> None:
    """A short table on stdout: accuracy and latency per engine."""
    from rich.console import Console
    from rich.table import Table

    rows = [report["reference"], *report["engines"]] if report["reference"].get("latency") else report["engines"]
    batch_sizes = sorted({lat["batch_size"] for row in rows for lat in row.get("latency", [])})
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("engine")
    if any(row.get("accuracy") for row in rows):
        for title in ("top-1 agree", "max abs diff", "top-1", "drop (pts)"):
            table.add_column(title, justify="right")
    for b in batch_sizes:
        table.add_column(f"b{b} p50 ms", justify="right")
        table.add_column(f"b{b} img/s", justify="right")
    has_accuracy = any(row.get("accuracy") for row in rows)
    for row in rows:
        cells = [row["name"]]
        acc = row.get("accuracy")
        if has_accuracy:
            if acc is None:
                top1 = report["reference"].get("top1")
                cells += ["reference", "", "n/a" if top1 is None else f"{top1 * 100:.2f}%", ""]
            else:
                cells += [
                    f"{acc['top1_agreement'] * 100:.2f}%",
                    "NaN/Inf" if acc.get("max_abs_diff") is None else f"{acc['max_abs_diff']:.3g}",
                    "n/a" if acc.get("top1") is None else f"{acc['top1'] * 100:.2f}%",
                    "n/a" if acc.get("top1_drop_points") is None else f"{acc['top1_drop_points']:+.2f}",
                ]
        for b in batch_sizes:
            lat = next((x for x in row.get("latency", []) if x["batch_size"] == b), None)
            cells += ["", ""] if lat is None else [f"{lat['p50_ms']:.2f}", f"{lat['throughput_ips']:.1f}"]
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table to 80 columns
        console = Console(width=200)
    console.print(table)


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C, so outputs are cleaned up."""

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    # PIL warns about damaged files (corrupt EXIF, images between 1x and 2x its pixel limit, ...): a file
    # the loader cannot use is skipped and counted with its reason in the report, so these are only noise.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    cli(prog_name="resnet-deploy")


if __name__ == "__main__":
    main()
