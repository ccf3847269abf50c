"""Validation numbers against an independent computation, NaN/Inf handling, the Runner contract."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from resnet_deploy.data import NpzDataset
from resnet_deploy.engines.base import Runner
from resnet_deploy.engines.ort import OrtRunner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.errors import UserError
from resnet_deploy.pipeline.validate import ReferenceOutputs, validate, validate_all


class ArrayRunner(Runner):
    """Returns fixed logits row by row: lets a test control exactly what an engine answers."""

    backend = "test"

    def __init__(self, logits: np.ndarray, name: str = "array") -> None:
        super().__init__(name, "fp32")
        self.logits = logits
        self.row = 0

    def _activate(self):
        self.row = 0

    def _deactivate(self):
        pass

    def _infer(self, batch):
        out = self.logits[self.row : self.row + len(batch)]
        self.row += len(batch)
        return out


def _npz(tmp_path, n, labels):
    images = np.zeros((n, 3, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", images=images, **({"labels": labels} if labels is not None else {}))
    return NpzDataset.open(tmp_path / "d.npz", (3, 8, 8))


def _independent(ref, out, labels):
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    cos = (ref64 * out64).sum(1) / (np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1))
    k = min(5, ref.shape[1])
    return {
        "top1_agreement": accuracy_score(ref.argmax(1), out.argmax(1)),
        "top5_agreement": top_k_accuracy_score(ref.argmax(1), out, k=k, labels=np.arange(ref.shape[1])),
        "max_abs_diff": np.abs(ref64 - out64).max(),
        "mean_abs_diff": np.abs(ref64 - out64).mean(),
        "cosine_min": cos.min(),
        "cosine_mean": cos.mean(),
        "top1": accuracy_score(labels, out.argmax(1)),
        "top1_ref": accuracy_score(labels, ref.argmax(1)),
        "top5": top_k_accuracy_score(labels, out, k=k, labels=np.arange(ref.shape[1])),
        "top5_ref": top_k_accuracy_score(labels, ref, k=k, labels=np.arange(ref.shape[1])),
    }


def test_metrics_match_sklearn_and_numpy(tmp_path):
    rng = np.random.default_rng(0)
    n, classes = 203, 12
    ref = rng.standard_normal((n, classes)).astype(np.float32) * 3
    out = (ref + rng.standard_normal((n, classes)).astype(np.float32) * 0.8).astype(np.float32)
    labels = np.where(rng.random(n) < 0.8, ref.argmax(1), rng.integers(0, classes, n))
    dataset = _npz(tmp_path, n, labels)
    accuracy = validate_all(ArrayRunner(ref, "ref"), [ArrayRunner(out)], dataset, classes, batch_size=16)[0]
    expected = _independent(ref, out, labels)
    for key, value in expected.items():
        assert getattr(accuracy, key) == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert accuracy.top1_drop_points == pytest.approx((expected["top1_ref"] - expected["top1"]) * 100)
    assert 0.5 < accuracy.top1_agreement < 1.0  # the noise above really flips some predictions
    assert accuracy.samples == n and accuracy.passed


def test_without_labels_accuracy_is_none(tmp_path):
    ref = np.eye(4, dtype=np.float32)[np.arange(10) % 4]
    dataset = _npz(tmp_path, 10, None)
    accuracy = validate_all(ArrayRunner(ref, "ref"), [ArrayRunner(ref.copy())], dataset, 4)[0]
    assert accuracy.top1 is None and accuracy.top1_drop_points is None
    assert accuracy.top1_agreement == 1.0 and accuracy.max_abs_diff == 0.0 and accuracy.cosine_min == pytest.approx(1.0)


def test_nan_outputs_fail_and_are_never_numbers(tmp_path):
    ref = np.random.default_rng(1).standard_normal((20, 5)).astype(np.float32)
    out = ref.copy()
    out[3, 2] = np.nan
    out[7, 0] = np.inf
    dataset = _npz(tmp_path, 20, np.zeros(20, np.int64))
    accuracy = validate_all(ArrayRunner(ref, "ref"), [ArrayRunner(out)], dataset, 5)[0]
    assert not accuracy.passed and accuracy.nonfinite_outputs == 2
    assert accuracy.top1_agreement == pytest.approx(18 / 20)
    as_dict = accuracy.as_dict()
    assert as_dict["max_abs_diff"] is None and as_dict["cosine_min"] is None


def test_changed_data_is_detected(tmp_path):
    ref = np.zeros((6, 3), np.float32)
    dataset = _npz(tmp_path, 6, None)
    with ArrayRunner(ref, "ref") as runner:
        reference = ReferenceOutputs.compute(runner, dataset, 3)
    with reference, ArrayRunner(ref) as runner, pytest.raises(UserError, match="changed"):
        validate(runner, dataset.select([0, 1, 2]), reference)


def test_onnxruntime_engine_on_the_digits(workload, loaded, fp32_onnx):
    from resnet_deploy.data import open_dataset

    dataset = open_dataset(workload.val, loaded.preprocess)
    engine = OrtRunner(fp32_onnx.path, "onnxruntime-fp32", "fp32")
    accuracy = validate_all(PyTorchRunner(loaded.module), [engine], dataset, 10)[0]
    assert accuracy.samples == len(dataset)
    assert accuracy.top1_agreement == 1.0
    assert accuracy.max_abs_diff < 1e-3
    assert accuracy.top1 == accuracy.top1_ref and accuracy.top1 > 0.9  # the model really learned the digits


def test_runner_contract():
    runner = ArrayRunner(np.zeros((4, 3), np.float32))
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(np.zeros((1, 3, 8, 8), np.float32))
    with runner:
        with pytest.raises(UserError, match="float32"):
            runner.infer(np.zeros((1, 3, 8, 8), np.float64))
        with pytest.raises(UserError, match=r"\(N, C, H, W\)"):
            runner.infer(np.zeros((3, 8, 8), np.float32))
        assert runner.infer(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 3)
    assert not runner.is_active
