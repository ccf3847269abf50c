"""Weights as training code saves them: Lightning checkpoints, timm train.py checkpoints, torchvision reference-script
checkpoints, hub folders; the weights chosen, the report and sidecars saying which, and one-line errors.

Every checkpoint is written here the way its training code lays it out, around the session's trained digits model:
Lightning's `Trainer.save_checkpoint` layout with torch.save (Lightning is not installed), timm's own
`CheckpointSaver` and `ModelEmaV3`, torchvision's reference-script dict with `torch.optim.swa_utils.AveragedModel`
(its ExponentialMovingAverage is one), and the hub folder with timm's own `save_for_hf`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.errors import UserError
from resnet_deploy.examples import digits
from resnet_deploy.models import ModelOptions, create_model, load_model, read_state_dict, resolve_arch

from .conftest import one_error_line, run_cli


def _trained(workload) -> dict[str, torch.Tensor]:
    return torch.load(workload.weights, weights_only=True)


def _model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = create_model(resolve_arch(digits.ARCH), 10)
    model.load_state_dict(state)
    return model


def _perturbed(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Other weights of the same shapes (the trained ones with noise): a model that is visibly not the trained one."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in state.items():
        if value.is_floating_point() and name.endswith("weight"):
            value = value + 0.5 * value.std() * torch.randn(value.shape, generator=generator)
        out[name] = value.clone()
    return out


def lightning_checkpoint(modules: dict[str, dict[str, torch.Tensor]], extra: dict[str, torch.Tensor] | None = None) -> dict:
    """What `Trainer.save_checkpoint` writes (lightning.pytorch.trainer.connectors.checkpoint_connector.dump_checkpoint)
    for a LightningModule whose attributes `modules` hold the networks (`self.model = ...`, `self.ema = ...`)."""
    state = {f"{attribute}.{name}": value for attribute, sd in modules.items() for name, value in sd.items()}
    first = next(iter(modules.values()))
    model = _model(first)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # real optimizer state (exp_avg, exp_avg_sq, step) as Lightning stores it
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=10)
    progress = {"total": {"ready": 17, "completed": 17}, "current": {"ready": 17, "completed": 17}}
    return {
        "epoch": 5,
        "global_step": 102,
        "pytorch-lightning_version": "2.5.1",
        "state_dict": {**state, **(extra or {})},
        "loops": {
            "fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 102}, "epoch_progress": progress},
            "validate_loop": {"state_dict": {}, "batch_progress": progress},
            "test_loop": {"state_dict": {}},
            "predict_loop": {"state_dict": {}},
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}": {
                "monitor": "val_acc",
                "best_model_score": torch.tensor(0.99),
                "best_model_path": "/runs/digits/epoch=5-step=102.ckpt",
                "current_score": torch.tensor(0.99),
                "dirpath": "/runs/digits",
                "best_k_models": {"/runs/digits/epoch=5-step=102.ckpt": torch.tensor(0.99)},
                "kth_best_model_path": "/runs/digits/epoch=5-step=102.ckpt",
                "kth_value": torch.tensor(0.99),
                "last_model_path": "",
            }
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"arch": "resnet18", "lr": 0.002, "num_classes": 10},
    }


def timm_checkpoints(folder: Path, state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor], model_name: str):
    """timm's train.py output, written by timm's own CheckpointSaver with a ModelEmaV3: checkpoint-0.pth.tar,
    last.pth.tar and model_best.pth.tar (`state_dict`, `state_dict_ema`, `arch`, `args`, `optimizer`, ...)."""
    from timm.utils import CheckpointSaver, ModelEmaV3

    model = _model(state)
    ema = ModelEmaV3(_model(ema_state))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(model=model_name, lr=0.1, epochs=6, model_ema=True, input_size=[3, 32, 32], mean=None)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(folder), recovery_dir=str(folder))
    saver.save_checkpoint(0, metric=0.99)
    return folder / "model_best.pth.tar"


def torchvision_checkpoint(state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor]) -> dict:
    """What torchvision's references/classification/train.py saves: model, optimizer, lr_scheduler, epoch, args and,
    with --model-ema, model_ema (its ExponentialMovingAverage is a torch.optim.swa_utils.AveragedModel)."""
    from torch.optim.swa_utils import AveragedModel

    model = _model(state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
    averaged = AveragedModel(_model(ema_state))
    args = argparse.Namespace(model="resnet18", lr=0.5, epochs=90, model_ema=True, output_dir="runs")
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": 89,
        "args": args,
        "model_ema": averaged.state_dict(),  # module.* plus n_averaged
    }


def _equal(loaded, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())


# ------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("attribute", ["model", "net", "backbone", "encoder.resnet"])
def test_lightning_checkpoint_whatever_the_attribute(tmp_path, workload, attribute):
    state = _trained(workload)
    path = tmp_path / "epoch=5-step=102.ckpt"
    torch.save(lightning_checkpoint({attribute: state}), path)
    loaded = load_model(digits.ARCH, path)
    assert loaded.num_classes == 10 and _equal(loaded, state)
    checkpoint = loaded.origin["checkpoint"]
    assert checkpoint["layout"] == "lightning" and checkpoint["entry"] == "state_dict"
    assert checkpoint["prefix"] == f"{attribute}." and checkpoint["ema"] is False


def test_lightning_checkpoint_with_an_ema_attribute_and_a_loss_buffer(tmp_path, workload):
    """Several wrappers: the model is taken, the EMA copy with --ema; the loss's class weights are no weights of it."""
    state, ema = _perturbed(_trained(workload)), _trained(workload)
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint({"model": state, "model_ema.module": ema}, {"criterion.weight": torch.ones(10)}), path)
    plain = load_model(digits.ARCH, path)
    assert _equal(plain, state)
    checkpoint = plain.origin["checkpoint"]
    assert checkpoint["prefix"] == "model." and checkpoint["ignored_tensors"] == 1 + len(ema)
    assert checkpoint["also_found"] == ["'state_dict' with prefix 'model_ema.module.' (EMA)"]
    assert "--ema uses the EMA weights" in checkpoint["description"]
    averaged = load_model(digits.ARCH, path, options=ModelOptions(ema=True))
    assert _equal(averaged, ema) and averaged.origin["checkpoint"]["prefix"] == "model_ema.module."


def test_timm_train_checkpoints_from_timms_checkpoint_saver(tmp_path, workload):
    state, ema = _perturbed(_trained(workload)), _trained(workload)
    best = timm_checkpoints(tmp_path, state, ema, "resnet18")
    for name in ("model_best.pth.tar", "last.pth.tar", "checkpoint-0.pth.tar"):
        loaded = load_model(digits.ARCH, tmp_path / name)
        assert _equal(loaded, state), name
        assert loaded.origin["checkpoint"]["layout"] == "timm-train"
        assert loaded.origin["checkpoint"]["declared_arch"] == "resnet18"
    averaged = load_model(digits.ARCH, best, options=ModelOptions(ema=True))
    assert _equal(averaged, ema)
    assert averaged.origin["checkpoint"]["entry"] == "state_dict_ema" and averaged.origin["checkpoint"]["ema"] is True
    raw = torch.load(best, weights_only=False)  # our own file: only to show what timm wrote
    assert {"state_dict", "state_dict_ema", "arch", "args", "optimizer", "epoch", "metric"} <= set(raw)


def test_torchvision_reference_checkpoint(tmp_path, workload):
    state, ema = _perturbed(_trained(workload)), _trained(workload)
    path = tmp_path / "checkpoint.pth"
    torch.save(torchvision_checkpoint(state, ema), path)
    loaded = load_model(digits.ARCH, path)
    assert _equal(loaded, state) and loaded.origin["checkpoint"]["layout"] == "torchvision-reference"
    averaged = load_model(digits.ARCH, path, options=ModelOptions(ema=True))
    assert _equal(averaged, ema)
    checkpoint = averaged.origin["checkpoint"]
    assert (checkpoint["entry"], checkpoint["prefix"], checkpoint["ignored_tensors"]) == ("model_ema", "module.", 1)


def test_safetensors_with_an_attribute_prefix(tmp_path, workload):
    from safetensors.torch import save_file

    state = _trained(workload)
    path = tmp_path / "w.safetensors"
    save_file({f"net.module.{k}": v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_model(digits.ARCH, path)
    assert _equal(loaded, state) and loaded.origin["checkpoint"]["prefix"] == "net.module."


def test_read_state_dict_without_an_arch_strips_the_shared_prefix(tmp_path, workload):
    state = _trained(workload)
    path = tmp_path / "w.ckpt"
    torch.save(lightning_checkpoint({"net": state}), path)
    assert set(read_state_dict(path)) == set(state)


def test_other_pickled_objects_beside_the_namespace_are_still_refused(tmp_path, workload):
    """argparse.Namespace is allowed (timm's and torchvision's `args`); any other class is not unpickled."""
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": _trained(workload), "args": argparse.Namespace(out=Path("/runs"))}, path)
    with pytest.raises(UserError, match=r"holds pickled Python objects \(pathlib\.\w*Path"):
        load_model(digits.ARCH, path)


# ------------------------------------------------------------------------------------------ hub folders


def save_hub_folder(folder: Path, state: dict[str, torch.Tensor], **config) -> Path:
    """timm's own `save_for_hf` (offline: it writes config.json and the weights, nothing is downloaded)."""
    from timm.models._hub import save_for_hf

    data_config = config.pop("data_config", {"input_size": digits.INPUT_SIZE})
    save_for_hf(_model(state), str(folder), model_config=config, safe_serialization=True, data_config=data_config)
    return folder


def test_hub_folder_names_arch_classes_preprocessing_and_class_names(tmp_path, workload):
    state = _trained(workload)
    names = [f"digit {i}" for i in range(10)]
    data_config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0, "crop_mode": "squash"}
    folder = save_hub_folder(tmp_path / "hub", state, label_names=names, data_config=data_config)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(None, folder)
    assert str(loaded.arch) == "resnet18" and loaded.num_classes == 10 and _equal(loaded, state)
    assert loaded.class_names == tuple(names)
    assert loaded.preprocess.input_size == (3, 32, 32) and loaded.preprocess.mean == (0.5, 0.5, 0.5)
    assert loaded.preprocess.std == (0.25, 0.25, 0.25) and loaded.preprocess.crop_mode == "squash"
    assert set(loaded.origin["preprocess_source"].values()) == {str(folder / "config.json")}
    assert load_model("resnet18", folder).class_names == tuple(names)  # --arch may be given: it agrees


def test_hub_folder_with_pytorch_model_bin_is_read_safely(tmp_path, workload):
    from timm.models._hub import save_for_hf

    state = _trained(workload)
    save_for_hf(_model(state), str(tmp_path / "hub"), safe_serialization=False)  # pytorch_model.bin (torch.save)
    loaded = load_model(None, tmp_path / "hub", input_size=digits.INPUT_SIZE)
    assert loaded.weights_path.name == "pytorch_model.bin" and _equal(loaded, state)
    evil = tmp_path / "hub" / "pytorch_model.bin"
    evil.write_bytes(evil.read_bytes()[:-100])
    with pytest.raises(UserError, match="is corrupted|truncated"):
        load_model(None, tmp_path / "hub")


# ------------------------------------------------------------------------------------------ through the CLI


def _build(weights: Path, out: Path, workload, *extra: str, arch: str | None = digits.ARCH) -> dict:
    """A real build through the console script (ONNX Runtime only, short timing): its report.json."""
    args = [*(["--arch", arch] if arch else []), "--weights", str(weights), "--val-data", str(workload.val)]
    proc = run_cli(
        "build", *args, "--out", str(out), "--engines", "onnxruntime", "--batch-sizes", "1",
        "--warmup", "1", "--iterations", "3", "--quiet", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "report.json").read_text())


def _sidecars(out: Path) -> list[dict]:
    return [json.loads((out / f"{name}.json").read_text()) for name in ("model.folded.safetensors", "model.fp32.onnx")]


def test_lightning_checkpoint_builds_through_the_console_script(tmp_path, workload):
    state = _trained(workload)
    path = tmp_path / "epoch=5-step=102.ckpt"
    torch.save(lightning_checkpoint({"net": state, "ema.module": _perturbed(state)}), path)
    report = _build(path, tmp_path / "out", workload, "--input-size", "3x32x32")
    checkpoint = report["model"]["checkpoint"]
    assert (checkpoint["layout"], checkpoint["entry"], checkpoint["prefix"]) == ("lightning", "state_dict", "net.")
    assert checkpoint["also_found"] == ["'state_dict' with prefix 'ema.module.' (EMA)"]
    assert report["reference"]["top1"] == pytest.approx(workload.test_accuracy, abs=1.5 / 449)
    assert report["engines"][0]["accuracy"]["top1_agreement"] == 1.0
    for sidecar in _sidecars(tmp_path / "out"):
        assert sidecar["origin"]["checkpoint"]["prefix"] == "net."
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "PyTorch Lightning checkpoint, weights from 'state_dict' with prefix 'net.'" in markdown


def test_timm_ema_checkpoint_builds_with_the_ema_weights(tmp_path, workload):
    """The EMA copy is the trained model, the other weights are noise on it: --ema must show the trained accuracy."""
    best = timm_checkpoints(tmp_path, _perturbed(_trained(workload)), _trained(workload), "resnet18")
    report = _build(best, tmp_path / "out", workload, "--input-size", "3x32x32", "--ema")
    assert report["model"]["checkpoint"]["entry"] == "state_dict_ema"
    assert report["model"]["checkpoint"]["also_found"] == ["'state_dict'"]
    assert report["reference"]["top1"] == pytest.approx(workload.test_accuracy, abs=1.5 / 449)
    noisy = load_model(digits.ARCH, best, input_size=digits.INPUT_SIZE)  # without --ema: the other weights
    assert not _equal(noisy, _trained(workload))


def test_hub_folder_builds_without_arch(tmp_path, workload):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    folder = save_hub_folder(tmp_path / "hub", _trained(workload), label_names=names)
    report = _build(folder, tmp_path / "out", workload, arch=None)
    model = report["model"]
    assert model["arch"] == "resnet18" and model["input_shape"] == [3, 32, 32]  # from config.json
    assert model["class_names"] == names and model["class_names_source"].endswith("config.json label_names")
    assert model["checkpoint"]["layout"] == "hub"
    assert report["reference"]["top1"] == pytest.approx(workload.test_accuracy, abs=1.5 / 449)
    for sidecar in _sidecars(tmp_path / "out"):
        assert sidecar["class_names"] == names and sidecar["preprocess"] == model["preprocess"]


def test_torchvision_checkpoint_folds_through_the_console_script(tmp_path, workload):
    state = _trained(workload)
    path = tmp_path / "checkpoint.pth"
    torch.save(torchvision_checkpoint(_perturbed(state), state), path)
    out = tmp_path / "folded.safetensors"
    proc = run_cli("fold", "--arch", "resnet18", "--weights", str(path), "--ema", "--data", str(workload.val), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    logged = " ".join(proc.stderr.split())  # the log wraps long lines on a narrow stderr
    assert "torchvision reference-script checkpoint, weights from 'model_ema' with prefix 'module.' (EMA)" in logged
    sidecar = json.loads((tmp_path / "folded.safetensors.json").read_text())
    assert sidecar["origin"]["checkpoint"]["entry"] == "model_ema"
    assert sidecar["class_names"] == [str(i) for i in range(10)]  # the --data class folders


# ------------------------------------------------------------------------------------------ bad input


def _fold(*args: str):
    return CliRunner().invoke(cli, ["fold", *args, "--out", "/nonexistent/never-written.safetensors"])


def test_bad_checkpoints_exit_2_with_one_line(tmp_path, workload):
    state = _trained(workload)
    torch.save(lightning_checkpoint({"model": state}), tmp_path / "l.ckpt")
    one_error_line(
        _fold("--arch", "resnet50", "--weights", str(tmp_path / "l.ckpt")),
        "('state_dict' with prefix 'model.') do not fit --arch resnet50: 198 missing",
    )
    assert "did you mean --arch resnet18?" in _fold("--arch", "resnet50", "--weights", str(tmp_path / "l.ckpt")).output

    torch.save({"weights": {f"encoder.{k}_": v for k, v in state.items()}, "epoch": 3}, tmp_path / "u.pth")
    line = one_error_line(_fold("--arch", "resnet18", "--weights", str(tmp_path / "u.pth")), "no tensor names fit --arch")
    assert "top-level keys: 'weights', 'epoch'" in line and "prefixes tried: '', 'encoder.'" in line

    torch.save(state, tmp_path / "plain.pth")
    one_error_line(_fold("--arch", "resnet18", "--weights", str(tmp_path / "plain.pth"), "--ema"), "--ema: ")
    assert (
        "holds no EMA weights (found: the top level); drop --ema"
        in _fold("--arch", "resnet18", "--weights", str(tmp_path / "plain.pth"), "--ema").output
    )

    timm_checkpoints(tmp_path, state, state, "resnet34")  # a train.py run that recorded another model
    one_error_line(
        _fold("--arch", "resnet18", "--weights", str(tmp_path / "model_best.pth.tar")),
        "was saved by a training script for 'resnet34', not --arch resnet18; pass --arch resnet34",
    )

    torch.save(lightning_checkpoint({"teacher": state, "student": _perturbed(state)}), tmp_path / "kd.ckpt")
    one_error_line(_fold("--arch", "resnet18", "--weights", str(tmp_path / "kd.ckpt")), "holds several complete sets of resnet18")

    torch.save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "empty.pth")
    one_error_line(_fold("--arch", "resnet18", "--weights", str(tmp_path / "empty.pth")), "holds no tensors (top-level keys")
    one_error_line(_fold("--weights", str(tmp_path / "plain.pth")), "--arch is missing")


def test_bad_hub_folders_exit_2_with_one_line(tmp_path, workload):
    state = _trained(workload)
    folder = save_hub_folder(tmp_path / "hub", state, label_names=[str(i) for i in range(10)])
    one_error_line(_fold("--arch", "resnet34", "--weights", str(folder)), "--arch resnet34 disagrees with")

    config = json.loads((folder / "config.json").read_text())
    for change, message in [
        ({"label_names": ["a", "b"]}, "label_names has 2 class names, the classifier 10 outputs"),
        ({"model_args": {**config["model_args"], "global_pool": "max"}}, "model_args {'global_pool': 'max'} differ"),
        ({"architecture": "vit_base_patch16_224"}, "is not a ResNet-family architecture"),
        ({"pretrained_cfg": {**config["pretrained_cfg"], "crop_pct": 3.0}}, "preprocessing crop_pct must be within 0.1..1.0"),
        ({"pretrained_cfg": "x"}, "'pretrained_cfg' must be an object"),
    ]:
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        one_error_line(_fold("--weights", str(folder)), message)
    (folder / "config.json").write_text("{not json")
    one_error_line(_fold("--weights", str(folder)), "config.json is not readable JSON")
    (folder / "config.json").unlink()
    one_error_line(_fold("--weights", str(folder)), "is a folder without config.json")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    one_error_line(_fold("--weights", str(folder)), "has config.json but neither model.safetensors nor pytorch_model.bin")
