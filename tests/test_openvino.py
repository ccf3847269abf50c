"""The OpenVINO CPU engine on the digits ResNet-18: accuracy of every precision against PyTorch, FP32 really
computed in f32, any batch size (static and dynamic shapes, parallel requests), the model cache, `--engines`
through the CLI, bad options, and what happens where OpenVINO cannot be imported."""

from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.calibration.methods import CalibrationMethod
from resnet_deploy.cli import cli
from resnet_deploy.config import BuildConfig, Engine, default_engines, load_toml_options, parse_engines
from resnet_deploy.data import open_dataset
from resnet_deploy.engines.naming import engine_name
from resnet_deploy.engines.openvino import MAX_STATIC_SHAPES, OpenVINOOptions, OpenVINORunner, PerformanceHint, ShapeMode
from resnet_deploy.engines.ort import exact_runner
from resnet_deploy.engines.pytorch import PyTorchRunner
from resnet_deploy.errors import MissingDependency, UserError
from resnet_deploy.isa import host_isa
from resnet_deploy.options import Target
from resnet_deploy.pipeline.kernels import kernel_loss
from resnet_deploy.pipeline.plan import plan_engines
from resnet_deploy.pipeline.validate import validate_all

from .conftest import accurate_or_flagged, build_args

QUICK = ("--batch-sizes", "1,3", "--warmup", "1", "--iterations", "3")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def models(fp32_onnx, quantized):
    """The FP32, FP16 and INT8 (both targets, entropy) ONNX files of the digits model, by engine name."""
    return {
        "openvino-fp32": fp32_onnx,
        "openvino-fp16": quantized["fp16"],
        "openvino-int8": quantized[(CalibrationMethod.ENTROPY, Target.ONNXRUNTIME)],
        "openvino-int8-tensorrt": quantized[(CalibrationMethod.ENTROPY, Target.TENSORRT)],
    }


@pytest.fixture(scope="module")
def exact_accuracies(models, loaded, workload):
    """Each reduced-precision model under its exact ONNX semantics (its accuracy whatever the CPU), by engine name."""
    val = open_dataset(workload.val, loaded.preprocess)
    names = [name for name in models if name != "openvino-fp32"]
    runners = [exact_runner(models[n].path, models[n].precision, models[n].target) for n in names]
    return dict(zip(names, validate_all(PyTorchRunner(loaded.module), runners, val, loaded.num_classes)))


@pytest.fixture(scope="module")
def validated(models, loaded, workload):
    """Every OpenVINO engine against one PyTorch reference pass over the 449 validation images."""
    val = open_dataset(workload.val, loaded.preprocess)
    runners = [OpenVINORunner(m.path, name, m.precision, m.target, threads=2) for name, m in models.items()]
    accuracies = validate_all(PyTorchRunner(loaded.module), runners, val, loaded.num_classes)
    return {r.name: (r, a) for r, a in zip(runners, accuracies)}


def test_names_follow_the_recipe_made_for_the_backend():
    assert engine_name("openvino", "int8", "onnxruntime") == "openvino-int8"  # OpenVINO's default INT8 recipe
    assert engine_name("openvino", "int8", "tensorrt") == "openvino-int8-tensorrt"
    assert engine_name("openvino", "fp32", None) == "openvino-fp32"
    assert engine_name("onnxruntime", "int8", "tensorrt") == "onnxruntime-int8-tensorrt"
    assert engine_name("tensorrt", "int8", "onnxruntime") == "tensorrt-int8-onnxruntime"


def test_plan_runs_every_onnx_model_on_both_cpu_engines(fp32_onnx, tmp_path):
    int8 = dataclasses.replace(fp32_onnx, path=tmp_path / "model.int8.onnx", precision="int8", target="onnxruntime")
    int8_trt = dataclasses.replace(fp32_onnx, path=tmp_path / "model.int8-tensorrt.onnx", precision="int8", target="tensorrt")
    config = BuildConfig(
        arch="resnet18", weights=tmp_path / "w.pth", val_data=tmp_path, out=tmp_path / "out",
        targets=(Target.ONNXRUNTIME, Target.TENSORRT), engines=(Engine.ONNXRUNTIME, Engine.OPENVINO),
        openvino=OpenVINOOptions(bf16=True),
    )  # fmt: skip
    specs = plan_engines([fp32_onnx, int8, int8_trt], config)
    assert [(s.name, s.precision, s.final_path.name) for s in specs] == [
        ("onnxruntime-fp32", "fp32", "model.fp32.onnx"),
        ("openvino-fp32", "fp32", "model.fp32.onnx"),
        ("openvino-bf16", "bf16", "model.fp32.onnx"),  # the FP32 model computed in bfloat16, named so
        ("tensorrt-fp32", "fp32", "model.fp32.engine"),
        ("onnxruntime-int8", "int8", "model.int8.onnx"),
        ("openvino-int8", "int8", "model.int8.onnx"),
        ("onnxruntime-int8-tensorrt", "int8", "model.int8-tensorrt.onnx"),
        ("openvino-int8-tensorrt", "int8", "model.int8-tensorrt.onnx"),
        ("tensorrt-int8", "int8", "model.int8.engine"),
    ]
    runner = specs[2].runner(config, tmp_path)
    assert isinstance(runner, OpenVINORunner) and runner.inference_precision == "bf16" and specs[2].result().precision == "bf16"
    assert specs[1].runner(config, tmp_path).inference_precision == "f32"


def test_fp32_is_computed_in_f32_and_matches_pytorch(validated):
    runner, accuracy = validated["openvino-fp32"]
    assert accuracy.samples == 449 and accuracy.passed
    assert accuracy.top1_agreement == 1.0 and accuracy.max_abs_diff < 1e-3 and accuracy.cosine_min > 0.999999
    details = runner.describe()
    # OpenVINO's CPU default on bf16-capable CPUs is bfloat16: the engine must have asked for, and got, f32
    assert details["inference_precision"] == details["compiled_inference_precision_hint"] == "f32"
    assert set(details["compiled"]) == {"32", "1"}  # 449 = 14 x 32 + 1: one static compile per batch size seen
    # and OpenVINO's executed graph: every convolution and the classifier in f32 kernels
    assert details["executed"]["compute_layers"] == {"Convolution": {"f32": 20}, "FullyConnected": {"f32": 1}}


@pytest.mark.parametrize(
    ("name", "min_agreement"), [("openvino-fp16", 0.995), ("openvino-int8", 0.99), ("openvino-int8-tensorrt", 0.98)]
)
def test_reduced_precision_agrees_with_pytorch(validated, exact_accuracies, name, min_agreement):
    """As run on OpenVINO here: the FP16 and the onnxruntime-target INT8 model (made for this kind of CPU) keep their
    thresholds on any CPU. The tensorrt-target model (symmetric S8S8, for TensorRT's int32 accumulation) keeps it
    under its exact semantics; on OpenVINO it keeps it too unless this CPU has no VNNI, where the saturation is
    flagged with its cause (the report's kernel_loss) instead."""
    runner, accuracy = validated[name]
    exact = exact_accuracies[name]
    assert accuracy.samples == 449 and accuracy.passed
    loss = kernel_loss(name, runner.target, None, accuracy, exact, host_isa())
    row = {"name": name, "accuracy": asdict(accuracy), "reference_accuracy": asdict(exact), "kernel_loss": loss}
    accurate_or_flagged(row, min_agreement)
    if name != "openvino-int8-tensorrt":
        assert loss is None and accuracy.top1_agreement >= min_agreement, f"{name}: {accuracy.top1_agreement:.4f}"
    assert (accuracy.top1_drop_points if loss is None else exact.top1_drop_points) <= 1.0
    details = runner.describe()
    assert details["compiled_inference_precision_hint"] == "f32"  # layers left in float stay FP32
    convolutions = details["executed"]["compute_layers"]["Convolution"]
    if runner.precision == "int8":  # every convolution runs in an INT8 kernel (u8/i8 activations)
        assert set(convolutions) <= {"u8", "i8"} and sum(convolutions.values()) == 20, convolutions
    else:  # FP16 weights, f32 compute on this CPU
        assert set(convolutions) == {"f32"}, convolutions


@pytest.mark.skipif("not has_bf16()", reason="this CPU has no bfloat16 instructions for OpenVINO")
def test_bf16_is_its_own_engine(fp32_onnx, val_images):
    fp32 = OpenVINORunner(fp32_onnx.path, "openvino-fp32", "fp32", threads=2)
    bf16 = OpenVINORunner(fp32_onnx.path, "openvino-bf16", "bf16", threads=2)
    with fp32, bf16:
        exact, rounded = fp32.infer(val_images), bf16.infer(val_images)
    assert bf16.describe()["compiled_inference_precision_hint"] == "bf16"
    assert 1e-3 < np.abs(exact - rounded).max() < 1.0  # visibly not FP32, still the same predictions
    assert (exact.argmax(1) == rounded.argmax(1)).mean() >= 0.98


def test_any_batch_size_in_every_shape_mode(fp32_onnx, val_images):
    """Static (one model per batch size, least recently used dropped), dynamic, and the throughput hint
    (a batch split over parallel requests, the last chunk padded) all give the same logits."""
    images = val_images[: MAX_STATIC_SHAPES + 3]
    sizes = [*range(1, MAX_STATIC_SHAPES + 2), 5, 1]
    outputs = {}
    options = {
        "static": OpenVINOOptions(),
        "dynamic": OpenVINOOptions(shapes=ShapeMode.DYNAMIC),
        "throughput": OpenVINOOptions(hint=PerformanceHint.THROUGHPUT, streams=2),
    }
    for label, option in options.items():
        runner = OpenVINORunner(fp32_onnx.path, "openvino-fp32", "fp32", threads=2, options=option)
        with runner:
            outputs[label] = [runner.infer(images[:n]) for n in sizes]
            kept = list(runner._compiled)
        details = runner.describe()
        if label == "static":
            assert len(kept) == MAX_STATIC_SHAPES and kept[-2:] == [5, 1]  # bounded, most recent last
            assert set(details["compiled"]) == {str(n) for n in range(1, MAX_STATIC_SHAPES + 2)}
        if label == "dynamic":
            assert list(details["compiled"]) == ["dynamic"]
        if label == "throughput":
            assert details["compiled_num_streams"] == 2 and details["compiled_optimal_number_of_infer_requests"] == 2
            assert "3" in details["compiled"]  # 5 images: two requests of 3, the last one padded
    for label in ("dynamic", "throughput"):
        for n, a, b in zip(sizes, outputs["static"], outputs[label]):
            assert a.shape == b.shape == (n, 10)
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"{label}, batch {n}")


def test_second_start_loads_from_the_model_cache(models, val_images, tmp_path):
    cache = tmp_path / "ov-cache"
    model = models["openvino-int8"]
    results = []
    for _ in range(2):  # two runners, two OpenVINO cores: the second one can only reuse what is on disk
        runner = OpenVINORunner(model.path, "openvino-int8", "int8", "onnxruntime", 2, OpenVINOOptions(cache_dir=cache))
        with runner:
            runner.prepare(4)
            results.append((runner.infer(val_images[:4]), runner.describe()["compiled"]["4"], sorted(cache.iterdir())))
    (first, compiled_first, files_first), (second, compiled_second, files_second) = results
    assert compiled_first["loaded_from_cache"] is False and compiled_second["loaded_from_cache"] is True
    assert files_first and files_first == files_second and all(f.suffix == ".blob" for f in files_first)
    np.testing.assert_array_equal(first, second)


def test_build_runs_both_cpu_engines_side_by_side(built):
    code, output, out = built
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["engines"]}
    assert list(rows) == ["onnxruntime-fp32", "openvino-fp32"]  # the default: openvino too, as it is installed
    row = rows["openvino-fp32"]
    assert (row["backend"], row["precision"], row["target"]) == ("openvino", "fp32", None)
    assert row["path"] == str(out / "model.fp32.onnx")
    assert row["accuracy"]["top1_agreement"] == 1.0 and [lat["batch_size"] for lat in row["latency"]] == [1, 4]
    runtime = row["details"]["runtime"]
    assert runtime["compiled_inference_precision_hint"] == "f32" and runtime["shapes"] == "static"
    assert report["versions"]["openvino"]
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in rows:
        assert f"| {name} |" in markdown and f'data-engine="{name}"' in page


def test_build_with_openvino_only_bf16_dynamic_and_a_cache(workload, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    extra = ["--engines", "openvino", "--openvino-shapes", "dynamic", "--openvino-cache-dir", str(cache)]
    if has_bf16():
        extra.append("--openvino-bf16")
    result = invoke(*build_args(workload, out, *extra, *QUICK))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in report["engines"]]
    assert names == (["openvino-fp32", "openvino-bf16"] if has_bf16() else ["openvino-fp32"])
    for row in report["engines"]:
        runtime = row["details"]["runtime"]
        assert runtime["shapes"] == "dynamic" and list(runtime["compiled"]) == ["dynamic"]
        assert runtime["compiled_inference_precision_hint"] == {"openvino-fp32": "f32", "openvino-bf16": "bf16"}[row["name"]]
        assert row["precision"] == row["name"].split("-")[1]
    assert any(cache.glob("*.blob"))


def test_bench_and_validate_choose_engines(built, models, workload, tmp_path):
    _, _, out = built
    int8 = models["openvino-int8"].path
    args = ["--onnx", str(out / "model.fp32.onnx"), "--onnx", str(int8), "--quiet"]
    result = invoke("bench", *args, "--engines", "onnxruntime,openvino", "--batch-sizes", "1,2", "--warmup", "1",
                    "--iterations", "3", "--json", str(tmp_path / "b.json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["engines"]
    assert [(r["name"], r["backend"]) for r in rows] == [
        ("onnxruntime-fp32", "onnxruntime"),
        ("openvino-fp32", "openvino"),
        ("onnxruntime-int8", "onnxruntime"),
        ("openvino-int8", "openvino"),
    ]
    assert all([lat["batch_size"] for lat in r["latency"]] == [1, 2] for r in rows)
    assert rows[3]["details"]["compiled_inference_precision_hint"] == "f32"
    result = invoke("validate", "--arch", "resnet18", "--weights", str(workload.weights), "--input-size", "3x32x32", *args,
                    "--engines", "openvino", "--val-data", str(workload.val), "--json", str(tmp_path / "v.json"))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "v.json").read_text())["engines"]
    assert [r["name"] for r in rows] == ["openvino-fp32", "openvino-int8"]
    assert rows[0]["accuracy"]["top1_agreement"] == 1.0 and rows[1]["accuracy"]["top1_agreement"] >= 0.99


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--engines", "onnxruntime,tensorflow"), "--engines: unknown value 'tensorflow'; valid values: onnxruntime, openvino"),
        (("--engines", ","), "--engines: give at least one value"),
        (("--openvino-hint", "fast"), "--openvino-hint: unknown value 'fast'; valid values: latency, throughput"),
        (("--openvino-shapes", "fixed"), "--openvino-shapes: unknown value 'fixed'; valid values: static, dynamic"),
        (("--openvino-streams", "0"), "--openvino-streams must be between 1 and 1024, got 0"),
        (("--engines", "onnxruntime", "--openvino-bf16"), "--openvino-bf16 adds an OpenVINO engine; add openvino to --engines"),
    ],
)
def test_bad_engine_options_exit_2_with_one_line(workload, tmp_path, extra, message):
    result = invoke(*build_args(workload, tmp_path / "out", *extra))
    assert result.exit_code == 2 and message in result.output
    assert result.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_bad_cache_folder_and_bench_options_exit_2(built, tmp_path):
    _, _, out = built
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = invoke("bench", "--onnx", str(out / "model.fp32.onnx"), "--openvino-cache-dir", str(not_a_folder))
    assert result.exit_code == 2 and "--openvino-cache-dir" in result.output and "is a file" in result.output
    result = invoke("bench", "--onnx", str(out / "model.fp32.onnx"), "--engines", "openvino", "--openvino-streams", "0")
    assert result.exit_code == 2 and "--openvino-streams must be between 1 and 1024" in result.output


def test_toml_takes_the_engine_keys(tmp_path):
    config = tmp_path / "build.toml"
    config.write_text('engines = "openvino"\nopenvino_hint = "throughput"\nopenvino_streams = 2\n'
                      'openvino_cache_dir = "cache"\nopenvino_shapes = "dynamic"\nopenvino_bf16 = true\n')  # fmt: skip
    options = load_toml_options(config)
    assert options["engines"] == "openvino" and options["openvino_bf16"] is True and options["openvino_streams"] == 2
    assert options["openvino_cache_dir"] == str((tmp_path / "cache").resolve())
    config.write_text("openvino_bf16 = 1\n")
    with pytest.raises(UserError, match="'openvino_bf16' must be true or false"):
        load_toml_options(config)


@pytest.fixture
def without_openvino(monkeypatch):
    """`import openvino` fails in this process, as on a machine where it is not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_without_openvino_the_default_quietly_is_onnxruntime_only(without_openvino, workload, tmp_path):
    assert default_engines() == (Engine.ONNXRUNTIME,) and parse_engines(None) == (Engine.ONNXRUNTIME,)
    out = tmp_path / "out"
    result = invoke(*build_args(workload, out, "--batch-sizes", "1", "--warmup", "1", "--iterations", "2"))
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads((out / "report.json").read_text())["engines"]] == ["onnxruntime-fp32"]
    said = [line for line in result.output.splitlines() if not line.startswith("report: ")]  # (its path names this test)
    assert said and not any("openvino" in line.lower() for line in said)  # quietly: no note, no warning


def test_without_openvino_asking_for_it_exits_2(without_openvino, built, workload, tmp_path):
    _, _, built_out = built
    with pytest.raises(MissingDependency, match="OpenVINO is not installed here"):
        parse_engines("onnxruntime,openvino")
    for args in (
        build_args(workload, tmp_path / "out", "--engines", "openvino"),
        ["bench", "--onnx", str(built_out / "model.fp32.onnx"), "--engines", "onnxruntime,openvino"],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0
        assert result.output.startswith("error: --engines openvino: OpenVINO is not installed here")
        assert "pip install openvino" in result.output
    assert not (tmp_path / "out").exists()
