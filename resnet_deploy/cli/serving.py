"""`triton` and `serve-check`: a Triton model repository of a build, and a real server checked against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from .options import check_limits, common
from .tables import print_repository, print_serving

EPILOG_TRITON = """\b
Examples:
  resnet-deploy triton out/ --repo triton-repo/                     # ONNX Runtime / OpenVINO / TensorRT backends
  resnet-deploy triton out/ --repo triton-py/ --python-backend      # any Triton with the Python backend (CPU)
"""


@click.command(epilog=EPILOG_TRITON)
@click.argument("build_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--repo", required=True, type=click.Path(path_type=Path), help="The model repository folder to write.")
@click.option(
    "--python-backend",
    is_flag=True,
    help="Serve each ONNX file from a model.py (ONNX Runtime or OpenVINO) through Triton's Python backend, on the CPU.",
)
@click.option("--force", is_flag=True, help="Replace an existing --repo.")
@click.option("--max-batch-size", type=int, help="max_batch_size (default: the build's largest --batch-sizes).")
@click.option("--preferred-batch-sizes", help="Dynamic batching's preferred batch sizes (default: the build's --batch-sizes).")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True, help="Dynamic batching's queue delay.")
@click.option("--instance-count", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option(
    "--instance-kind",
    help="cpu or gpu, for the ONNX Runtime models (default: cpu; OpenVINO and the Python backend run on the CPU, "
    "TensorRT on the GPU).",
)
@click.option("--threads", type=int, help="Threads of each model instance's runtime (default: the runtime's).")
@click.option(
    "--python-env",
    type=click.Path(path_type=Path),
    help="--python-backend: the Python environment (EXECUTION_ENV_PATH) the models run in (default: this one).",
)
@click.option("--onnxruntime-tensorrt", is_flag=True, help="ONNX Runtime models: use ONNX Runtime's TensorRT accelerator (GPU).")
@common
def triton(progress, build_dir: Path, repo: Path, force: bool, **options: Any) -> int:
    """Write a Triton model repository with one model per engine file of the build in OUT."""
    import sys

    from ..options import parse_choice, parse_int_list
    from ..serving.kinds import InstanceKind
    from ..serving.repository import RepositoryOptions, write_repository

    repository_options = RepositoryOptions(
        python_backend=options["python_backend"],
        max_batch_size=options["max_batch_size"],
        preferred_batch_sizes=parse_int_list(options["preferred_batch_sizes"], "--preferred-batch-sizes")
        if options["preferred_batch_sizes"]
        else None,
        max_queue_delay_us=options["max_queue_delay_us"],
        instance_count=options["instance_count"],
        instance_kind=parse_choice(InstanceKind, options["instance_kind"], "--instance-kind")
        if options["instance_kind"]
        else None,
        threads=options["threads"],
        python_env=str(Path(options["python_env"]).absolute()) if options["python_env"] else sys.prefix,
        onnxruntime_tensorrt=options["onnxruntime_tensorrt"],
    )
    if options["python_env"] and not (Path(options["python_env"]) / "bin" / "activate").is_file():
        raise UserError(f"--python-env {options['python_env']} has no bin/activate; give a virtualenv (Triton sources it)")
    print_repository(write_repository(build_dir, repo, repository_options, force))
    return 0


EPILOG_SERVE_CHECK = """\b
Example:
  resnet-deploy triton out/ --repo triton-py/ --python-backend
  resnet-deploy serve-check triton-py/ --val-data val/ --build out/ --concurrency 1,2,4,8
"""


@click.command("serve-check", epilog=EPILOG_SERVE_CHECK)
@click.argument("repo", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--val-data", required=True, type=click.Path(path_type=Path), help="Images (or .npz) sent to the server.")
@click.option(
    "--build",
    "build_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The build's --out: its report gets a serving section.",
)
@click.option("--concurrency", default="1,2,4,8", show_default=True, help="Requests in flight, per level of the sweep.")
@click.option("--requests", type=int, default=500, show_default=True, help="Timed requests per level, at most.")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Seconds per level, at most.")
@click.option("--images", type=int, default=256, show_default=True, help="Validation images sent for the agreement check.")
@click.option("--models", help="Comma-separated model names (default: every model of the repository).")
@click.option(
    "--atol", type=float, default=1e-3, show_default=True, help="Largest logit difference allowed, relative to the largest logit."
)
@click.option("--threads", type=int, help="Threads of the in-process engine the served logits are checked against.")
@click.option(
    "--tritonserver", type=click.Path(path_type=Path), help="The tritonserver binary (default: PATH, then nvidia-pytriton's)."
)
@click.option("--grpc-port", type=int, help="The server's gRPC port on 127.0.0.1 (default: a free one).")
@click.option("--startup-timeout", type=float, default=120.0, show_default=True, help="Seconds the server has to become ready.")
@common
def serve_check(progress, repo: Path, val_data: Path, build_dir: Path, **options: Any) -> int:
    """Serve a repository on a real tritonserver: served logits against the engine in process, latency under load."""
    from ..data import Preprocess, first_images, open_dataset
    from ..options import parse_int_list
    from ..reports.schema import read_report
    from ..serving.check import ServeCheckOptions, write_serving
    from ..serving.check import serve_check as run_check
    from ..serving.load import LoadOptions
    from ..serving.repository import read_repository

    check_options = ServeCheckOptions(
        load=LoadOptions(
            parse_int_list(options["concurrency"], "--concurrency", maximum=256), options["requests"], options["seconds"]
        ),
        images=options["images"],
        models=tuple(m.strip() for m in options["models"].split(",") if m.strip()) if options["models"] else None,
        atol=options["atol"],
        threads=options["threads"],
        tritonserver=options["tritonserver"],
        grpc_port=options["grpc_port"],
        startup_timeout=options["startup_timeout"],
    )
    check_limits(options)
    if not (Path(build_dir) / "report.json").is_file():
        raise UserError(f"--build {build_dir} has no report.json; give the --out folder of resnet-deploy build")
    report = read_report(Path(build_dir) / "report.json", "build report")
    read_repository(repo)  # a bad repository is refused before the data is read
    dataset = open_dataset(val_data, Preprocess.from_dict(report["model"]["preprocess"]))
    images = first_images(dataset, min(check_options.images, len(dataset)))
    section = run_check(repo, images, check_options, progress)
    write_serving(build_dir, section)
    print_serving(section)
    for failure in section["failures"]:
        click.echo(f"FAILED {failure}", err=True)
    click.echo(f"report: {Path(build_dir) / 'report.json'}, {Path(build_dir) / 'report.md'}, {Path(build_dir) / 'report.html'}")
    return 1 if section["failures"] else 0
