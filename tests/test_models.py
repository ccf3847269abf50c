"""Loading trained weights: architectures, checkpoint layouts, safe loading, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from resnet_deploy.errors import UserError
from resnet_deploy.examples import digits
from resnet_deploy.models import create_model, infer_num_classes, load_model, read_state_dict, resolve_arch


@pytest.mark.parametrize(
    ("name", "library", "resolved"),
    [
        ("resnet50", "timm", "resnet50"),
        ("ResNet18", "timm", "resnet18"),
        ("torchvision/resnet50", "torchvision", "resnet50"),
        ("timm/seresnet50", "timm", "seresnet50"),
        ("res2net50_26w_4s", "timm", "res2net50_26w_4s"),
        ("resnext50_32x4d", "timm", "resnext50_32x4d"),
        ("wide_resnet50_2", "timm", "wide_resnet50_2"),
        ("resnet50d", "timm", "resnet50d"),
        ("ecaresnet50t", "timm", "ecaresnet50t"),
        ("skresnet18", "timm", "skresnet18"),
    ],
)
def test_resolve_arch_known_names(name, library, resolved):
    spec = resolve_arch(name)
    assert (spec.library, spec.name) == (library, resolved)


def test_resolve_arch_unknown_lists_close_matches():
    with pytest.raises(UserError, match=r"resnet50") as info:
        resolve_arch("resnet05")
    assert "close matches" in str(info.value)


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "efficientnet_b0", "torchvision/vgg16", "mobilenet_v2"])
def test_resolve_arch_refuses_non_resnets(name):
    with pytest.raises(UserError, match="not a ResNet-family architecture"):
        resolve_arch(name)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.module."])
def test_checkpoint_layouts(tmp_path, wrapper, prefix):
    model = create_model(resolve_arch("resnet18"), 7)
    state = {prefix + k: v for k, v in _state(model).items()}
    payload = state if wrapper is None else {wrapper: state, "epoch": 3, "best_acc": 0.9}
    path = tmp_path / "w.pth"
    torch.save(payload, path)
    loaded = load_model("resnet18", path)
    assert loaded.num_classes == 7  # inferred from fc.weight
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)


def test_safetensors(tmp_path):
    model = create_model(resolve_arch("resnet18"), 4)
    path = tmp_path / "w.safetensors"
    save_file(_state(model), str(path))
    loaded = load_model("resnet18", path)
    assert loaded.num_classes == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), model(x))


def test_whole_pickled_model_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(create_model(resolve_arch("resnet18"), 3), path)  # a whole module, pickled
    with pytest.raises(UserError, match=r"never unpickles.*model\.state_dict\(\)"):
        read_state_dict(path)


def test_num_classes_explicit_mismatch_names_the_key(tmp_path, workload):
    with pytest.raises(UserError, match=r"fc\.weight.*\(10, 512\)"):
        load_model("resnet18", workload.weights, num_classes=1000)


def test_wrong_arch_suggests_the_likely_one(workload):
    with pytest.raises(UserError, match=r"198 missing.*mis-shaped.*did you mean --arch resnet18\?") as info:
        load_model("resnet50", workload.weights)
    assert "layer1.0.conv3.weight" in str(info.value)


def test_nonfinite_weights_are_named(tmp_path):
    state = _state(create_model(resolve_arch("resnet18"), 3))
    state["layer2.1.bn1.running_var"][5] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"layer2\.1\.bn1\.running_var.*1 NaN/Inf"):
        load_model("resnet18", path)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        (b"", ".pth", "empty"),
        (b"not a checkpoint at all", ".pth", "not a readable PyTorch checkpoint"),
        (b"\xff" * 64, ".safetensors", "not a valid safetensors file"),
        (b"{}", ".json", "unsupported file type"),
    ],
)
def test_broken_weight_files(tmp_path, content, suffix, message):
    path = tmp_path / f"w{suffix}"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_state_dict(path)


def test_truncated_checkpoint(tmp_path, workload):
    data = workload.weights.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupted"):
        read_state_dict(path)


def test_preprocessing_from_timm_and_override(workload):
    loaded = load_model(digits.ARCH, workload.weights)
    assert loaded.preprocess.input_size == (3, 224, 224)
    assert loaded.preprocess.interpolation == "bicubic" and loaded.preprocess.crop_pct == 0.95  # timm resnet18.a1
    small = load_model(digits.ARCH, workload.weights, input_size=(3, 32, 32))
    assert small.preprocess.input_size == (3, 32, 32)
    assert small.preprocess.mean == loaded.preprocess.mean


def test_torchvision_weights_load_into_torchvision_arch(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(num_classes=5).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    loaded = load_model("torchvision/resnet18", path)
    assert loaded.arch.library == "torchvision"
    assert loaded.preprocess.interpolation == "bilinear" and loaded.preprocess.crop_pct == 0.875
    assert infer_num_classes(read_state_dict(path), loaded.arch) == 5
