"""The preprocessing a model was trained with (--mean/--std/--crop-pct/--crop-mode/--interpolation and the same config
keys) and its class names (--labels, a hub config's label_names, ImageFolder class folders): where they come from,
where they are recorded, what they change, and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.cli.build import _build_config
from resnet_deploy.cli.build import build as build_command
from resnet_deploy.config import load_toml_options
from resnet_deploy.data import ImageFolderDataset, Preprocess, PreprocessOverrides, open_dataset, preprocess_overrides
from resnet_deploy.errors import UserError
from resnet_deploy.examples import digits
from resnet_deploy.models import ModelOptions, load_model
from resnet_deploy.reports.markdown import to_markdown
from resnet_deploy.reports.schema import read_report

from .conftest import one_error_line, run_cli

# The example of a model's own preprocessing: resized to the input size without a center crop, mean/std 0.5.
OWN = Preprocess((3, 32, 32), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0, crop_mode="squash")
OWN_FLAGS = ("--mean", "0.5", "--std", "0.5,0.5,0.5", "--crop-pct", "1", "--crop-mode", "squash", "--interpolation", "bilinear")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def top1(model: torch.nn.Module, folder: Path, preprocess: Preprocess) -> float:
    correct = total = 0
    with torch.inference_mode():
        for batch in ImageFolderDataset.scan(folder, preprocess).iter_batches(256):
            correct += int((model(torch.from_numpy(batch.images)).argmax(1).numpy() == batch.labels).sum())
            total += len(batch.labels)
    return correct / total


@pytest.fixture(scope="module")
def own_model(workload, tmp_path_factory):
    """A digits model trained for OWN's preprocessing, in seconds: the session's model with its BatchNorm statistics
    estimated again on the training images under OWN (one forward pass in train mode; no gradient steps). Returns
    (weights.pth, its top-1 on the validation images under OWN, as measured at training time)."""
    model = load_model(digits.ARCH, workload.weights, input_size=digits.INPUT_SIZE).module
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for batch in ImageFolderDataset.scan(workload.train, OWN).iter_batches(256):
            model(torch.from_numpy(batch.images))
    model.eval()
    path = tmp_path_factory.mktemp("own") / "own.pth"
    torch.save(model.state_dict(), path)
    return path, top1(model, workload.val, OWN)


# ------------------------------------------------------------------------------------------ preprocessing


def test_overrides_replace_the_arch_default_each_alone(workload):
    default = load_model(digits.ARCH, workload.weights, input_size=digits.INPUT_SIZE)
    assert (default.preprocess.interpolation, default.preprocess.crop_pct) == ("bicubic", 0.95)  # timm's resnet18.a1
    options = ModelOptions(preprocess=PreprocessOverrides(crop_pct=1.0, mean=(0.5, 0.5, 0.5)))
    loaded = load_model(digits.ARCH, workload.weights, input_size=digits.INPUT_SIZE, options=options)
    assert loaded.preprocess.crop_pct == 1.0 and loaded.preprocess.mean == (0.5, 0.5, 0.5)
    assert loaded.preprocess.std == default.preprocess.std and loaded.preprocess.interpolation == "bicubic"
    sources = loaded.origin["preprocess_source"]
    assert sources["crop_pct"] == "--crop-pct" and sources["mean"] == "--mean" and sources["input_size"] == "--input-size"
    assert sources["std"] == sources["interpolation"] == "timm's default for resnet18"


def test_the_models_own_preprocessing_is_validated_at_its_training_accuracy(tmp_path, workload, own_model):
    weights, trained_top1 = own_model
    out = tmp_path / "out"
    proc = run_cli(
        "build", "--arch", digits.ARCH, "--weights", str(weights), "--input-size", "3x32x32", "--val-data",
        str(workload.val), "--out", str(out), "--engines", "onnxruntime", "--batch-sizes", "1", "--warmup", "1",
        "--iterations", "3", *OWN_FLAGS,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = " ".join(proc.stderr.split())  # the log wraps long lines on a narrow stderr
    assert (
        printed.count("preprocessing: ") == 1
        and (
            "preprocessing: 3x32x32, bilinear, crop_pct 1 (squash), mean 0.5,0.5,0.5, std 0.5,0.5,0.5 "
            "(input_size: --input-size; interpolation: --interpolation; mean: --mean; std: --std; crop_pct: --crop-pct; "
            "crop_mode: --crop-mode)"
        )
        in printed
    )
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["top1"] == pytest.approx(trained_top1, abs=1.5 / 449)
    assert report["engines"][0]["accuracy"]["top1"] == pytest.approx(trained_top1, abs=1.5 / 449)
    assert report["model"]["preprocess"] == OWN.to_dict()
    for name in ("model.folded.safetensors", "model.fp32.onnx"):  # every model's sidecar: later stages read it
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["preprocess"] == report["model"]["preprocess"]
        assert sidecar["origin"]["preprocess_source"]["mean"] == "--mean"
    assert "preprocessing: 3x32x32, bilinear, crop_pct 1 (squash)" in (out / "report.md").read_text()

    # the same model validated with the arch's default preprocessing: visibly lower
    proc = run_cli(
        "validate", "--arch", digits.ARCH, "--weights", str(weights), "--input-size", "3x32x32", "--onnx",
        str(out / "model.fp32.onnx"), "--val-data", str(workload.val), "--engines", "onnxruntime",
        "--json", str(tmp_path / "v.json"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    default_top1 = json.loads((tmp_path / "v.json").read_text())["engines"][0]["accuracy"]["top1_ref"]
    assert default_top1 < trained_top1 - 0.3, (default_top1, trained_top1)


def test_config_keys_give_the_same_options_as_the_flags(tmp_path, workload):
    config = tmp_path / "build.toml"
    config.write_text(
        f'arch = "resnet18"\nweights = "{workload.weights}"\nval_data = "{workload.val}"\nout = "o"\n'
        'mean = "0.5"\nstd = "0.5,0.5,0.5"\ncrop_pct = 1\ncrop_mode = "squash"\ninterpolation = "bilinear"\n'
        'ema = true\nlabels = "names.txt"\n'
    )
    from_file = _build_command_config(["--config", str(config)])
    from_flags = _build_command_config(
        ["--arch", "resnet18", "--weights", str(workload.weights), "--val-data", str(workload.val), "--out", "o", *OWN_FLAGS,
         "--ema", "--labels", str(tmp_path / "names.txt")]
    )  # fmt: skip
    assert from_file.model_options == from_flags.model_options
    assert from_file.model_options.preprocess == PreprocessOverrides("bilinear", (0.5,) * 3, (0.5,) * 3, 1.0, "squash")
    assert from_file.model_options.labels == tmp_path / "names.txt" and from_file.model_options.ema is True
    flag_wins = _build_command_config(["--config", str(config), "--crop-pct", "0.9"])
    assert flag_wins.model_options.preprocess.crop_pct == 0.9


def _build_command_config(args: list[str]):
    """The BuildConfig `resnet-deploy build ARGS` would run (click parses, nothing is built)."""
    ctx = build_command.make_context("build", list(args))
    options = dict(ctx.params)
    for key in ("config_file", "junit", "summary", "quiet", "debug"):
        options.pop(key)
    with ctx:
        return _build_config(ctx, ctx.params["config_file"], options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--crop-pct", "1.5"), "--crop-pct must be between 0.1 and 1"),
        (("--crop-pct", "nan"), "--crop-pct must be between 0.1 and 1"),
        (("--mean", "2"), "--mean: each value must be between 0 and 1"),
        (("--mean", "0.5,0.5"), "--mean: expected 1 or 3 numbers (one per channel), got 2"),
        (("--mean", "a,b,c"), "--mean: expected 1 or 3 numbers separated by commas"),
        (("--std", "0"), "--std: each value must be between 0.001 and 10"),
        (("--std", "inf"), "--std: each value must be between 0.001 and 10"),
        (("--interpolation", "cubic"), "--interpolation: unknown value 'cubic'; valid values: nearest, bilinear"),
        (("--crop-mode", "zoom"), "--crop-mode: unknown value 'zoom'; valid values: center, squash, border"),
    ],
)
def test_preprocessing_out_of_range_exits_2(tmp_path, workload, flags, message):
    commands = (["build", "--val-data", str(workload.val), "--out", str(tmp_path / "o")], ["fold", "--out", str(tmp_path / "f")])
    for command in commands:
        result = CliRunner().invoke(cli, [*command, "--arch", "resnet18", "--weights", str(workload.weights), *flags])
        one_error_line(result, message)
    assert not (tmp_path / "o").exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crop_pct = 0\n", "key 'crop_pct' must be between 0.1 and 1"),
        ("crop_pct = true\n", "key 'crop_pct' must be a number, got bool"),
        ('mean = "0.5,0.5,7"\n', "key 'mean': each value must be between 0 and 1"),
        ("mean = [0.5, 0.5, 0.5]\n", "key 'mean' must be a string"),
        ('std = "-1"\n', "key 'std': each value must be between 0.001 and 10"),
        ('interpolation = "area"\n', "key 'interpolation': unknown value 'area'"),
        ('crop_mode = ""\n', "key 'crop_mode': unknown value ''"),
        ('ema = "yes"\n', "key 'ema' must be true or false"),
        ('labels = ""\n', "key 'labels' must not be empty"),
    ],
)
def test_preprocessing_config_keys_are_checked(tmp_path, text, message):
    (tmp_path / "build.toml").write_text(text)
    with pytest.raises(UserError) as info:
        load_toml_options(tmp_path / "build.toml")
    assert message in str(info.value) and str(tmp_path / "build.toml") in str(info.value)


def test_one_value_means_every_channel():
    assert preprocess_overrides(mean="0.25", std="0.5").given() == {"mean": (0.25,) * 3, "std": (0.5,) * 3}
    assert preprocess_overrides().given() == {}


# ------------------------------------------------------------------------------------------ class names


def _word_folders(workload, root: Path) -> Path:
    """The validation images in folders named after the classes, which sort otherwise (eight, five, four, ...)."""
    for digit, word in enumerate(WORDS):
        shutil.copytree(workload.val / str(digit), root / word)
    return root


def test_labels_file_names_the_classes_and_labels_folders_by_name(tmp_path, workload, loaded):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(WORDS) + "\n\n")
    model = load_model(digits.ARCH, workload.weights, input_size=digits.INPUT_SIZE, options=ModelOptions(labels=names))
    assert model.class_names == WORDS and model.origin["class_names_source"] == f"--labels {names}"
    folders = _word_folders(workload, tmp_path / "val")
    by_name = open_dataset(folders, model.preprocess, class_names=model.class_names)
    assert by_name.by_name and dict(zip(by_name.files, by_name.labels)) == {f: WORDS.index(f.parent.name) for f in by_name.files}
    sorted_order = open_dataset(folders, model.preprocess)  # no class names: torchvision's sorted order
    assert not sorted_order.by_name and sorted_order.classes[0] == "eight" and sorted_order.labels[0] == 0


def test_class_names_in_the_report(tmp_path, workload):
    """--labels and folders named after the classes in another order: the labels follow the names (the accuracy is the
    model's), and report.md / report.html show the worst classes by name and the most frequent confusions."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(WORDS) + "\n")
    out = tmp_path / "out"
    proc = run_cli(
        "build", "--arch", digits.ARCH, "--weights", str(workload.weights), "--input-size", "3x32x32", "--labels",
        str(names), "--val-data", str(_word_folders(workload, tmp_path / "val")), "--out", str(out), "--engines",
        "onnxruntime", "--batch-sizes", "1", "--warmup", "1", "--iterations", "3", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = read_report(out / "report.json")
    assert report["model"]["class_names"] == list(WORDS) and report["data"]["val"]["labels_by"] == "class names"
    assert report["reference"]["top1"] == pytest.approx(workload.test_accuracy, abs=1.5 / 449)
    per_class = report["reference"]["per_class"]
    assert sum(per_class["samples"]) == 449 and sum(per_class["correct"]) == round(report["reference"]["top1"] * 449)
    engine = report["engines"][0]["accuracy"]["per_class"]
    assert engine["samples"] == per_class["samples"] and engine["correct_ref"] == per_class["correct"]
    wrong = 449 - sum(per_class["correct"])
    assert sum(n for _, _, n in per_class["confusions"]) == wrong  # fewer than 20 pairs: all of them kept
    markdown = (out / "report.md").read_text()
    worst = min(range(10), key=lambda c: (per_class["correct"][c] / per_class["samples"][c], c))
    assert "## Per-class top-1 (the 10 worst classes)" in markdown
    assert markdown.split("## Per-class top-1")[1].splitlines()[4].startswith(f"| {WORDS[worst]} ({worst}) |")
    if wrong:
        true, predicted, count = per_class["confusions"][0]
        assert f"| {WORDS[true]} ({true}) | {WORDS[predicted]} ({predicted}) | {count} |" in markdown
    html = (out / "report.html").read_text()
    assert "Per-class top-1" in html and f"{WORDS[worst]} ({worst})" in html
    assert "Most frequent confusions (reference)" in html or not wrong
    assert to_markdown(report) == markdown  # rendered again from the file read back


def test_image_folders_name_the_classes_when_nothing_else_does(built):
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["class_names"] == [str(i) for i in range(10)]
    assert report["model"]["class_names_source"] == "--val-data class folders"
    sidecar = json.loads((out / "model.fp32.onnx.json").read_text())
    assert sidecar["class_names"] == report["model"]["class_names"]


def test_bad_labels_exit_2_with_one_line(tmp_path, workload):
    cases = {
        "nine.txt": ("\n".join(WORDS[:9]), "has 9 class names, the classifier 10 outputs"),
        "twice.txt": ("\n".join([*WORDS[:9], "zero"]), "class name 'zero' is given twice (1 and 10)"),
        "hole.txt": ("\n".join([*WORDS[:4], "", *WORDS[5:]]), "class name 5 is empty"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        result = CliRunner().invoke(
            cli, ["fold", "--arch", "resnet18", "--weights", str(workload.weights), "--labels", str(tmp_path / name),
                  "--out", str(tmp_path / "f")],
        )  # fmt: skip
        one_error_line(result, message)
    result = CliRunner().invoke(
        cli, ["fold", "--arch", "resnet18", "--weights", str(workload.weights), "--labels", str(tmp_path / "none.txt"),
              "--out", str(tmp_path / "f")],
    )  # fmt: skip
    one_error_line(result, "does not exist")


def test_data_that_does_not_fit_the_classes_exits_2(tmp_path, workload):
    val = tmp_path / "val"
    shutil.copytree(workload.val, val)
    shutil.copytree(workload.val / "0", val / "10")  # an eleventh class folder
    base = ["validate", "--arch", "resnet18", "--weights", str(workload.weights)]  # the data is refused before any engine
    one_error_line(CliRunner().invoke(cli, [*base, "--val-data", str(val)]), "has 11 class folders but the model has 10")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(WORDS) + "\n")
    mixed = _word_folders(workload, tmp_path / "words")
    (mixed / "nine").rename(mixed / "9")
    one_error_line(
        CliRunner().invoke(cli, [*base, "--val-data", str(mixed), "--labels", str(names), "--input-size", "3x32x32"]),
        "class folders '9' are not among the model's class names",
    )


def test_a_report_with_bad_per_class_counts_is_refused(built, tmp_path):
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    report["reference"]["per_class"]["confusions"] = [[0, 99, 3]]
    (tmp_path / "r.json").write_text(json.dumps(report))
    with pytest.raises(UserError, match=r"reference\.per_class\.confusions\[0\] must be \[true class, predicted class"):
        read_report(tmp_path / "r.json")
