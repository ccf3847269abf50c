"""ONNX export: checker, dynamic batch, parity on ONNX Runtime, self-describing file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from resnet_deploy.artifacts import OnnxArtifact, sidecar_path
from resnet_deploy.errors import CheckFailed, UserError
from resnet_deploy.pipeline import export as export_module
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm


def test_exported_model_is_valid_and_folded(fp32_onnx):
    proto = onnx.load(str(fp32_onnx.path))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["resnet_deploy.arch"] == "resnet18"
    assert json.loads(meta["resnet_deploy.preprocess"])["input_size"] == [3, 32, 32]
    assert OnnxArtifact.read(fp32_onnx.path) == fp32_onnx


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_parity_with_pytorch_at_any_batch_size(fp32_onnx, loaded, val_images, batch):
    session = ort.InferenceSession(str(fp32_onnx.path), providers=["CPUExecutionProvider"])
    x = val_images[:batch]
    out = session.run(None, {"input": x})[0]
    with torch.inference_mode():
        ref = loaded.module(torch.from_numpy(x)).numpy()
    assert out.shape == (batch, 10)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_parity_is_recorded_in_the_sidecar(fp32_onnx):
    meta = json.loads(sidecar_path(fp32_onnx.path).read_text())
    assert meta["details"]["parity"]["passed"] is True
    assert 0 <= meta["details"]["parity"]["max_abs_diff"] < 1e-3
    assert meta["details"]["batchnorm_nodes"] == 0


def test_parity_failure_leaves_no_file(loaded, val_images, tmp_path, monkeypatch):
    folded, _ = fold_batchnorm(loaded.module)

    real_export = export_module._export

    def export_then_corrupt(module, example, path, opset):
        real_export(module, example, path, opset)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:
            if init.dims and init.dims[0] == 10:  # the classifier: shift it
                arr = onnx.numpy_helper.to_array(init) + 0.5
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        onnx.save(proto, str(path))

    monkeypatch.setattr(export_module, "_export", export_then_corrupt)
    target = tmp_path / "bad.onnx"
    with pytest.raises(CheckFailed, match="ONNX Runtime disagrees with PyTorch"):
        export_onnx(folded, loaded.info, val_images[:8], target)
    assert list(tmp_path.iterdir()) == []


def test_old_opset_is_refused(loaded, val_images, tmp_path):
    folded, _ = fold_batchnorm(loaded.module)
    with pytest.raises(UserError, match="opset 18 or newer"):
        export_onnx(folded, loaded.info, val_images[:4], tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


def test_opset_the_exporter_cannot_produce_is_refused(loaded, val_images, tmp_path):
    """torch's exporter silently falls back to opset 18 for an opset it lacks: that is refused, not hidden."""
    folded, _ = fold_batchnorm(loaded.module)
    with pytest.raises(UserError, match=r"--opset 99 is not supported by the exporter \(it fell back to opset 18\)"):
        export_onnx(folded, loaded.info, val_images[:4], tmp_path / "m.onnx", opset=99)
    assert list(tmp_path.iterdir()) == []
