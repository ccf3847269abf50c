"""The `resnet-deploy` command line. The only package that knows about click, terminals and exit codes.

One module per command family (build; gate, compare, report; fold, export; quantize, layers; validate, bench;
triton, serve-check), the option groups and their parsing in `options`, the rich tables in `tables`. Commands are
thin: parse the options, call the pipeline, render what it returns; `options.common` turns errors into exit codes.
"""

from __future__ import annotations

import warnings

import click

from ..files import InterruptHandler
from . import build, check, quantize, serving, stages, validate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="resnet-deploy")
def cli() -> None:
    """Trained ResNet weights -> BN-folded ONNX -> validated, timed inference engines."""


for command in (
    build.build, check.gate, check.compare, check.report, stages.fold, stages.export, quantize.quantize,
    quantize.layers, validate.validate, validate.bench, serving.triton, serving.serve_check,
):  # fmt: skip
    cli.add_command(command)


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C, so outputs are cleaned up."""
    InterruptHandler.install()
    # PIL warns about damaged files (corrupt EXIF, images between 1x and 2x its pixel limit, ...): a file
    # the loader cannot use is skipped and counted with its reason in the report, so these are only noise.
    warnings.filterwarnings("ignore", module=r"PIL\.")
    cli(prog_name="resnet-deploy")


if __name__ == "__main__":
    main()
