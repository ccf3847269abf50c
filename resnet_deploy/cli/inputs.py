"""The user's inputs the single-stage commands share: the reference model, labelled data, check images."""

from __future__ import annotations

from pathlib import Path

import click

from .. import config
from ..errors import UserError

INPUT_SIZE = config.INPUT_SIZE.but(help="CxHxW (default: the arch's).")  # as the single-stage commands show it


def check_images(data: Path | None, preprocess, count: int = 32):
    """Real images for a stage check (from --data), else seeded random inputs, with a note on stderr."""
    import numpy as np

    from ..data import first_images, open_dataset

    if data is not None:
        return first_images(open_dataset(data, preprocess, option="--data"), count)
    click.echo(f"note: no --data given; checking on {count} random inputs instead of real images", err=True)
    rng = np.random.default_rng(0)
    return rng.standard_normal((count, *preprocess.input_size), dtype=np.float32)


def load_reference(arch: str | None, weights: Path, num_classes: int | None, input_size: str | None, options):
    """The user's model: load_model with the model options (--ema, --mean, ..., --labels)."""
    from ..models import ModelOptions, load_model
    from ..options import parse_input_size

    size = parse_input_size(input_size) if input_size else None
    return load_model(arch, weights, num_classes, size, ModelOptions.from_values(options))


def log_model(progress, model) -> None:
    """What was loaded (the weights used, the effective preprocessing, the class names), once, after the input checks."""
    for line in model.describe():
        progress.log(line)


def open_labelled(path: Path, model, option: str):
    """A data set preprocessed for `model`, labelled by its class names, its labels checked against its classes."""
    from ..data import check_labels, open_dataset

    dataset = open_dataset(path, model.preprocess, option=option, class_names=model.class_names)
    check_labels(dataset, model.num_classes, option)
    return dataset


def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"--out {path} already exists; pass --force to replace it, or choose another path")
