"""`fold` and `export`: one stage of the pipeline each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import config
from ..options import NUM_CLASSES
from .inputs import INPUT_SIZE, check_images, load_reference, log_model, open_labelled, refuse_existing
from .options import WEIGHTS_HELP, common, model_options, settings_options


@click.command(
    epilog="\b\nExample:\n  resnet-deploy fold --arch resnet50 --weights w.pth --data val/ --out model.folded.safetensors"
)
@click.option("--arch", help="ResNet-family architecture (a hub folder names its own).")
@click.option("--weights", required=True, type=click.Path(path_type=Path), help=WEIGHTS_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folded model (.safetensors + .json sidecar).")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz to verify the folding on.")
@settings_options(NUM_CLASSES, INPUT_SIZE)
@model_options
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@common
def fold(
    progress,
    arch: str | None,
    weights: Path,
    out: Path,
    data: Path | None,
    num_classes: int | None,
    input_size: str | None,
    force: bool,
    **options: Any,
) -> int:
    """Fold every Conv->BatchNorm pair and verify the folded model against the original."""
    from ..pipeline.fold import fold_and_verify, save_folded

    refuse_existing(out, force)
    model = load_reference(arch, weights, num_classes, input_size, options)
    if data is not None:
        from ..data import first_images

        dataset = open_labelled(data, model, "--data")
        model, images = model.name_classes_after(dataset, "--data"), first_images(dataset, 32)
    else:
        images = check_images(None, model.preprocess)
    log_model(progress, model)
    gm, result = fold_and_verify(model, images)
    save_folded(gm, model, result, out)
    click.echo(
        f"folded {result.folded} BatchNorm layers, {len(result.remaining)} remain; "
        f"max abs diff {result.parity.max_abs_diff:.3g} (relative {result.parity.max_rel_diff:.3g}) -> {out}"
    )
    for remaining in result.remaining:
        click.echo(f"  kept {remaining.name}: {remaining.reason}")
    return 0


@click.command(epilog="\b\nExample:\n  resnet-deploy export --folded model.folded.safetensors --data val/ --out model.fp32.onnx")
@click.option("--folded", required=True, type=click.Path(path_type=Path), help="Output of `resnet-deploy fold`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--data", type=click.Path(path_type=Path), help="Images or .npz for the parity check.")
@settings_options(config.OPSET)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@common
def export(progress, folded: Path, out: Path, data: Path | None, opset: int | None, force: bool) -> int:
    """Export a folded model to ONNX (dynamic batch), check it, and verify it on ONNX Runtime."""
    from ..artifacts import FoldedModelArtifact
    from ..pipeline.export import export_onnx
    from ..pipeline.fold import load_folded

    refuse_existing(out, force)
    artifact = FoldedModelArtifact.read(folded)
    info = artifact.info()
    images = check_images(data, info.preprocess)
    module = load_folded(artifact)
    onnx_artifact = export_onnx(module, info, images, out, opset, artifact.fold)
    parity = onnx_artifact.details["parity"]
    click.echo(f"exported opset {onnx_artifact.opset}; ONNX Runtime max abs diff {parity['max_abs_diff']:.3g} -> {out}")
    return 0
