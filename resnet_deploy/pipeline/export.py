"""ONNX export of the folded model (torch.onnx dynamo exporter), full checker, ONNX Runtime parity."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..artifacts import OnnxArtifact, write_sidecar
from ..errors import CheckFailed, UserError
from ..files import atomic_path, sha256_file
from ..models import ModelInfo
from .parity import Parity, compare_logits

EXPORT_TOLERANCE = 1e-4  # max |onnxruntime - pytorch| / max |pytorch| on the check inputs
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096


def onnx_parity(onnx_path: Path, module: nn.Module, images: np.ndarray, tolerance: float = EXPORT_TOLERANCE) -> Parity:
    """ONNX Runtime (CPU) vs PyTorch on `images`, also run one at a time to exercise the dynamic batch axis."""
    from ..engines.ort import OrtRunner

    with torch.inference_mode():
        ref = module.eval()(torch.from_numpy(images)).float().numpy()
    with OrtRunner(onnx_path, name="export-check", precision="fp32") as runner:
        out = runner.infer(images)
        single = runner.infer(images[:1])
    parity = compare_logits(ref, out, tolerance)
    single_parity = compare_logits(ref[:1], single, tolerance)
    return (
        parity
        if parity.max_rel_diff >= single_parity.max_rel_diff
        else Parity(single_parity.max_abs_diff, single_parity.max_rel_diff, parity.samples, tolerance)
    )


def _export(module: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    captured = io.StringIO()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        tail = captured.getvalue().strip().splitlines()[-1:] or [str(exc).splitlines()[0] if str(exc) else ""]
        raise CheckFailed(f"ONNX export failed: {type(exc).__name__}: {tail[0][:200]}") from exc


def export_onnx(
    folded: nn.Module,
    model: ModelInfo,
    images: np.ndarray,
    path: Path,
    opset: int | None = None,
    fold_summary: dict[str, object] | None = None,
) -> OnnxArtifact:
    """Export, check, verify against `folded` on ONNX Runtime, then move into place at `path`."""
    import onnx

    if opset is not None and opset < 18:
        raise UserError(f"--opset {opset}: the dynamo exporter needs opset 18 or newer")
    path = Path(path)
    example = torch.from_numpy(np.ascontiguousarray(images[:2]))
    if example.shape[0] < 2:  # a batch of 1 would specialise the batch axis
        example = example.repeat(2, 1, 1, 1)
    with atomic_path(path) as tmp:
        _export(folded.eval(), example, tmp, opset)
        proto = onnx.load(str(tmp))
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset is not None and opset_used != opset:  # the exporter falls back silently for opsets it lacks
            raise UserError(
                f"--opset {opset} is not supported by the exporter (it fell back to opset {opset_used}); choose a lower --opset"
            )
        _add_metadata(proto, model)
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise CheckFailed(f"exported ONNX fails onnx.checker: {str(exc).splitlines()[0][:200]}") from None
        parity = onnx_parity(tmp, folded, images)
        if not parity.passed:
            raise CheckFailed(
                f"ONNX Runtime disagrees with PyTorch after export: max relative error {parity.max_rel_diff:.3g} "
                f"(max abs {parity.max_abs_diff:.3g}) is above {parity.tolerance:g}; try another --opset"
            )
        bn_nodes = sum(1 for n in proto.graph.node if n.op_type == "BatchNormalization")
        digest = sha256_file(tmp)
    artifact = OnnxArtifact(
        path=path,
        arch=model.arch,
        num_classes=model.num_classes,
        preprocess=model.preprocess.to_dict(),
        precision="fp32",
        target=None,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        opset=opset_used,
        source_sha256=model.weights_sha256,
        details={"parity": parity.as_dict(), "batchnorm_nodes": bn_nodes, "fold": fold_summary or {}},
        class_names=None if model.class_names is None else list(model.class_names),
        origin=model.origin,
    )
    write_sidecar(path, artifact.metadata(), digest)
    return artifact


def _add_metadata(proto, model: ModelInfo) -> None:
    """Make the ONNX self-describing: arch, classes and preprocessing travel with the file."""
    entries = {
        "resnet_deploy.arch": model.arch,
        "resnet_deploy.num_classes": str(model.num_classes),
        "resnet_deploy.preprocess": json.dumps(model.preprocess.to_dict()),
        "resnet_deploy.weights_sha256": model.weights_sha256,
        **({"resnet_deploy.class_names": json.dumps(list(model.class_names))} if model.class_names is not None else {}),
    }
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in entries.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value
