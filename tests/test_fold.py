"""BN folding: exact across the family, BatchNormAct kept as act, leftovers explained, failures caught."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_deploy.errors import CheckFailed
from resnet_deploy.models import create_model, resolve_arch
from resnet_deploy.pipeline import fold as fold_module
from resnet_deploy.pipeline.fold import fold_and_verify, fold_batchnorm, load_folded, save_folded, verify


def _with_trained_like_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine terms, so that folding changes the weights."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def _count_bn(module: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in module.modules())


@pytest.mark.parametrize(
    ("arch", "expected_folded"),
    [("resnet18", 20), ("resnet50", 53), ("seresnet50", 53), ("res2net50_26w_4s", 85), ("resnext50_32x4d", 53)],
)
def test_folding_is_exact_across_the_family(arch, expected_folded):
    model = _with_trained_like_stats(create_model(resolve_arch(arch), 10))
    folded, result = fold_batchnorm(model)
    assert result.folded == expected_folded
    assert result.remaining == ()
    assert _count_bn(folded) == 0
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64), dtype=np.float32)
    parity = verify(model, folded, x)
    assert parity.passed and parity.max_rel_diff < 1e-5, parity


def test_batchnorm_act_folds_the_norm_and_keeps_the_activation():
    model = _with_trained_like_stats(create_model(resolve_arch("skresnet18"), 10))
    from timm.layers import BatchNormAct2d

    acts_before = sum(isinstance(m, BatchNormAct2d) and not isinstance(m.act, nn.Identity) for m in model.modules())
    assert acts_before > 0
    folded, result = fold_batchnorm(model)
    assert result.folded == 36 and _count_bn(folded) == 0
    called = [folded.get_submodule(n.target) for n in folded.graph.nodes if n.op == "call_module"]
    relus_in_graph = sum(isinstance(m, nn.ReLU) for m in called)
    assert relus_in_graph >= acts_before
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64), dtype=np.float32)
    assert verify(model, folded, x).passed


def test_preactivation_batchnorms_remain_with_reasons():
    model = _with_trained_like_stats(create_model(resolve_arch("resnetv2_50"), 10))
    folded, result = fold_batchnorm(model)
    assert result.folded == 32
    assert len(result.remaining) == 17 == _count_bn(folded)
    reasons = {r.reason for r in result.remaining}
    assert any("residual addition" in r for r in reasons) and any("MaxPool2d" in r for r in reasons)
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64), dtype=np.float32)
    assert verify(model, folded, x).passed


def test_linear_then_batchnorm1d_is_folded():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    _with_trained_like_stats(model)
    folded, result = fold_batchnorm(model)
    assert result.folded == 1 and _count_bn(folded) == 0
    x = np.random.default_rng(4).standard_normal((5, 3, 2, 2), dtype=np.float32)
    assert verify(model, folded, x).passed


def test_shared_conv_output_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _with_trained_like_stats(Branchy())
    folded, result = fold_batchnorm(model)
    assert result.folded == 0
    assert result.remaining[0].name == "bn" and "used elsewhere" in result.remaining[0].reason


def test_trained_digits_model_on_real_images(loaded, val_images):
    folded, result = fold_and_verify(loaded, val_images)
    assert result.folded == 20
    assert result.parity.samples == len(val_images)
    assert result.parity.max_rel_diff < 1e-5
    # folding really changed the convolutions: they now carry the BN shift as a bias
    assert folded.get_submodule("conv1").bias is not None


def test_a_wrong_fold_fails_the_check(loaded, val_images, monkeypatch):
    real = fold_module.fold_batchnorm

    def broken(module):
        gm, result = real(module)
        with torch.no_grad():
            gm.get_submodule("layer3.0.conv1").weight.mul_(1.01)
        return gm, result

    monkeypatch.setattr(fold_module, "fold_batchnorm", broken)
    with pytest.raises(CheckFailed, match="BN folding changed the logits") as info:
        fold_and_verify(loaded, val_images)
    assert info.value.exit_code == 1


def test_save_and_reload_folded(loaded, val_images, tmp_path):
    folded, result = fold_and_verify(loaded, val_images[:8])
    artifact = save_folded(folded, loaded, result, tmp_path / "m.safetensors")
    reread = type(artifact).read(tmp_path / "m.safetensors")
    assert reread == artifact
    rebuilt = load_folded(reread)
    x = torch.from_numpy(val_images[:8])
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), folded(x))
