"""TensorRT backend, everything that runs without TensorRT: the batch profile, options, the exact polygraphy
loader chain (real polygraphy, constructed lazily), the manifest and its compatibility check, the plan of
engines, and `build --target tensorrt` on a machine without TensorRT or GPU (this one, and CI).

What needs TensorRT and a GPU is in test_trt_gpu.py (`pytest -m gpu`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.artifacts import EngineArtifact, sidecar_path, write_with_sidecar
from resnet_deploy.cli import cli
from resnet_deploy.config import BuildConfig, Engine
from resnet_deploy.data import Preprocess
from resnet_deploy.engines.naming import engine_name
from resnet_deploy.engines.ort import (
    SIMULATED_INT8,
    OrtRunner,
    OrtTensorrtOptions,
    ort_tensorrt_options,
    parse_providers,
    tensorrt_provider_options,
    tensorrt_refusal,
)
from resnet_deploy.engines.trt import (
    BatchProfile,
    CudaStack,
    HardwareCompat,
    TensorRTOptions,
    TensorRTRunner,
    TrtEnvironment,
    check_compatible,
    count_layer_datatypes,
    cuda_majors_of_tensorrt,
    engine_build_chain,
    missing_requirements,
    parse_hardware_compat,
    run_build_chain,
    tensor_datatype,
    version_tuple,
)
from resnet_deploy.errors import CheckFailed, MissingDependency, UserError
from resnet_deploy.options import Target
from resnet_deploy.pipeline.plan import plan_engines
from resnet_deploy.reports.markdown import to_markdown
from resnet_deploy.reports.report import Latency

from .conftest import build_args, one_error_line

NO_TENSORRT = bool(missing_requirements())
needs_no_tensorrt = pytest.mark.skipif(not NO_TENSORRT, reason="checks the path taken when TensorRT or the GPU is missing")

# ------------------------------------------------------------------------------------------ profile


@pytest.mark.parametrize(
    ("sizes", "opt", "expected"),
    [
        ((1, 8), None, (1, 8, 8)),
        ((1, 8, 64, 128), None, (1, 64, 128)),
        ((1, 8, 32), None, (1, 8, 32)),
        ((4,), None, (4, 4, 4)),
        ((128, 1, 8, 8), None, (1, 8, 128)),  # unsorted and repeated: the unique sizes count
        ((1, 8, 64, 128), 8, (1, 8, 128)),
        ((1, 8, 64, 128), 100, (1, 100, 128)),  # any size inside the range, not only a benchmarked one
    ],
)
def test_profile_from_batch_sizes(sizes, opt, expected):
    profile = BatchProfile.from_batch_sizes(sizes, opt)
    assert (profile.min, profile.opt, profile.max) == expected
    assert profile.shapes((3, 32, 32)) == tuple((b, 3, 32, 32) for b in expected)
    assert profile.as_dict() == dict(zip(("min", "opt", "max"), expected))


@pytest.mark.parametrize(("sizes", "opt"), [((1, 8), 16), ((4, 8), 2), ((), None)])
def test_profile_rejects_opt_outside_the_range(sizes, opt):
    with pytest.raises(UserError, match="opt-batch-size|batch-sizes"):
        BatchProfile.from_batch_sizes(sizes, opt)


def test_profile_checks_its_order():
    with pytest.raises(UserError, match="min <= opt <= max"):
        BatchProfile(8, 4, 16)


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workspace_mib": 0}, "--workspace-mib"),
        ({"builder_optimization_level": 6}, "--builder-optimization-level must be 0..5"),
        ({"builder_optimization_level": -1}, "--builder-optimization-level"),
        ({"opt_batch_size": 0}, "--opt-batch-size"),
        ({"hardware_compat": "ampere+"}, "--hardware-compat"),  # a string, not the enum
    ],
)
def test_bad_tensorrt_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        TensorRTOptions(**kwargs)


def test_timing_cache_path_is_checked(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        TensorRTOptions(timing_cache=tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        TensorRTOptions(timing_cache=tmp_path / "no" / "cache.bin")
    assert TensorRTOptions(timing_cache=tmp_path / "cache.bin").timing_cache == tmp_path / "cache.bin"  # created on build


def test_hardware_compat_names():
    assert [parse_hardware_compat(t) for t in ("none", "AMPERE+", "same-cc")] == list(HardwareCompat)
    assert [h.trt_name for h in HardwareCompat] == ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"]
    with pytest.raises(UserError, match="valid values: none, ampere\\+, same-cc"):
        parse_hardware_compat("volta")


def test_version_tuple():
    assert version_tuple("10.13.3.9") == (10, 13, 3, 9)
    assert version_tuple("11.0.0rc1") == (11, 0, 0)
    assert version_tuple("10.9.0.34") < version_tuple("10.13.0.35")


# ------------------------------------------------------------------------------- polygraphy loaders


def test_polygraphy_chain_is_the_documented_strongly_typed_build(fp32_onnx, tmp_path):
    """The exact loaders `build_engine` calls, built by the real polygraphy: every argument name is checked
    by polygraphy's own signatures, and every value is what TensorRT will be asked for."""
    cache = tmp_path / "timing.cache"
    options = TensorRTOptions(
        workspace_mib=512,
        builder_optimization_level=4,
        timing_cache=cache,
        version_compatible=True,
        hardware_compat=HardwareCompat.AMPERE_PLUS,
        tf32=True,
    )
    profile = BatchProfile.from_batch_sizes((1, 8, 32))
    chain = engine_build_chain(fp32_onnx.path, tmp_path / "m.engine", fp32_onnx.input_name, (3, 32, 32), options, profile)

    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
    )

    assert isinstance(chain.network, NetworkFromOnnxPath) and chain.network.path == str(fp32_onnx.path)
    assert chain.network.strongly_typed is True
    assert isinstance(chain.config, CreateConfig)
    (shapes,) = chain.config.profiles
    assert list(shapes) == [fp32_onnx.input_name]
    assert (shapes[fp32_onnx.input_name].min, shapes[fp32_onnx.input_name].opt, shapes[fp32_onnx.input_name].max) == (
        (1, 3, 32, 32),
        (8, 3, 32, 32),
        (32, 3, 32, 32),
    )
    assert chain.config.tf32 is True
    assert (chain.config.fp16, chain.config.int8, chain.config.calibrator) == (False, False, None)  # precision from the ONNX
    assert chain.config.timing_cache_path == str(cache)
    assert chain.config.builder_optimization_level == 4 and chain.config.version_compatible is True
    assert isinstance(chain.builder_config, PostprocessConfig)
    # bytes are built and written as they are: a version-compatible engine cannot be deserialized and serialized
    # again (EngineFromNetwork + SaveEngine did that); EngineFromNetwork subclasses the bytes loader, so say it exactly
    assert type(chain.engine_bytes) is EngineBytesFromNetwork and not isinstance(chain.engine_bytes, EngineFromNetwork)
    assert chain.engine_bytes.timing_cache_path == str(cache)
    assert type(chain.save) is SaveBytes
    assert (chain.save._bytes, chain.save._path) == (chain.engine_bytes, str(tmp_path / "m.engine"))  # SaveBytes(obj, path)


def test_polygraphy_chain_defaults_leave_tensorrt_defaults(fp32_onnx, tmp_path):
    chain = engine_build_chain(
        fp32_onnx.path, tmp_path / "m.engine", "input", (3, 32, 32), TensorRTOptions(), BatchProfile(1, 1, 1)
    )
    assert chain.config.tf32 is False  # TF32 only on request
    assert chain.config.timing_cache_path is None and chain.engine_bytes.timing_cache_path is None
    assert chain.config.builder_optimization_level is None and not chain.config.version_compatible


@needs_no_tensorrt
def test_a_failed_build_is_one_checkfailed_line_and_writes_nothing(fp32_onnx, tmp_path):
    """The real polygraphy chain, called here without TensorRT, fails inside polygraphy (its lazy import of
    TensorRT): the failure reaches the user as the tool's one-line CheckFailed, not polygraphy's exception."""
    engine = tmp_path / "m.engine"
    chain = engine_build_chain(fp32_onnx.path, engine, "input", (3, 32, 32), TensorRTOptions(), BatchProfile(1, 1, 1))
    with pytest.raises(CheckFailed) as info:
        run_build_chain(chain, "model.fp32.onnx")
    message = str(info.value)
    assert message.startswith("TensorRT could not build an engine from model.fp32.onnx: ") and "tensorrt" in message
    assert "\n" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert not engine.exists()


# ------------------------------------------------------------------------- manifest, compatibility

BUILT = TrtEnvironment("10.13.3.9", "NVIDIA A100-SXM4-80GB", "8.0", "580.65.06")


def write_engine_manifest(folder: Path, env: TrtEnvironment = BUILT, **build: object) -> EngineArtifact:
    """A manifest as `build_engine` writes it, beside a stand-in payload (only the manifest is read here)."""
    artifact = EngineArtifact(
        path=folder / "model.fp32.engine",
        arch="resnet18",
        num_classes=10,
        preprocess=Preprocess(input_size=(3, 32, 32)).to_dict(),  # engines are read with the same checks as ONNX
        precision="fp32",
        target=None,
        input_name="input",
        output_name="logits",
        tensorrt_version=env.tensorrt_version,
        gpu=env.gpu(),
        build={"strongly_typed": True, **TensorRTOptions().as_dict(), **build},
        profile={"min": 1, "opt": 8, "max": 8},
        source_onnx="model.fp32.onnx",
        source_onnx_sha256="0" * 64,
        build_seconds=1.5,
        built_at="2026-11-29T12:00:00+00:00",
    )
    write_with_sidecar(artifact.path, lambda p: p.write_bytes(b"plan bytes"), artifact.metadata())
    return artifact


def test_manifest_round_trips(tmp_path):
    written = write_engine_manifest(tmp_path)
    read = EngineArtifact.read(written.path)
    assert read == written
    manifest = json.loads(sidecar_path(written.path).read_text())
    assert manifest["kind"] == "tensorrt-engine" and len(manifest["sha256"]) == 64
    assert manifest["gpu"] == {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "driver": "580.65.06"}
    assert manifest["build"]["strongly_typed"] is True and manifest["build"]["hardware_compat"] == "none"


def test_manifest_catches_a_changed_engine_and_a_foreign_file(tmp_path):
    artifact = write_engine_manifest(tmp_path)
    artifact.path.write_bytes(b"other bytes")
    with pytest.raises(UserError, match="changed after it was written"):
        EngineArtifact.read(artifact.path)
    stray = tmp_path / "stray.engine"
    stray.write_bytes(b"x")
    with pytest.raises(UserError, match="is missing"):
        EngineArtifact.read(stray)


def test_same_machine_is_compatible(tmp_path):
    assert check_compatible(write_engine_manifest(tmp_path), BUILT) == []


def test_other_tensorrt_version_is_refused_naming_both(tmp_path):
    engine = write_engine_manifest(tmp_path)
    here = dataclasses.replace(BUILT, tensorrt_version="10.14.1.48")
    with pytest.raises(UserError) as info:
        check_compatible(engine, here)
    message = str(info.value)
    assert "TensorRT 10.13.3.9 on NVIDIA A100-SXM4-80GB" in message and "TensorRT 10.14.1.48 on NVIDIA A100" in message
    assert "rebuild it here" in message and "\n" not in message


def test_version_compatible_engines_run_on_newer_tensorrt_only(tmp_path):
    engine = write_engine_manifest(tmp_path, version_compatible=True)
    assert check_compatible(engine, dataclasses.replace(BUILT, tensorrt_version="11.4.0.106")) == []
    with pytest.raises(UserError, match="TensorRT that built it or a newer one"):
        check_compatible(engine, dataclasses.replace(BUILT, tensorrt_version="10.9.0.34"))


def test_other_gpu_is_refused_naming_both(tmp_path):
    engine = write_engine_manifest(tmp_path)
    here = TrtEnvironment("10.13.3.9", "NVIDIA L4", "8.9", None)
    with pytest.raises(UserError, match=r"A100-SXM4-80GB \(compute capability 8.0\).*NVIDIA L4 \(compute capability 8.9\)"):
        check_compatible(engine, here)


def test_same_compute_capability_other_model_runs_with_a_warning(tmp_path):
    here = TrtEnvironment("10.13.3.9", "NVIDIA A100-PCIE-40GB", "8.0", None)
    (warning,) = check_compatible(write_engine_manifest(tmp_path), here)
    assert "A100-PCIE-40GB" in warning and "rebuild" in warning
    assert check_compatible(write_engine_manifest(tmp_path, hardware_compat="same-cc"), here) == []


def test_ampere_plus_engines_run_on_newer_gpus_only(tmp_path):
    engine = write_engine_manifest(tmp_path, hardware_compat="ampere+")
    assert check_compatible(engine, TrtEnvironment("10.13.3.9", "NVIDIA H100", "9.0", None)) == []
    with pytest.raises(UserError, match="compute capability 8.0 or newer"):
        check_compatible(engine, TrtEnvironment("10.13.3.9", "Tesla T4", "7.5", None))


def test_runner_reads_the_manifest_without_tensorrt(tmp_path):
    engine = write_engine_manifest(tmp_path)
    runner = TensorRTRunner(engine.path)
    assert runner.name == "tensorrt-fp32" and runner.precision == "fp32" and runner.chw == (3, 32, 32)
    assert runner.describe()["tensorrt"] == "10.13.3.9"


@needs_no_tensorrt
def test_runner_without_tensorrt_says_what_is_missing(tmp_path):
    runner = TensorRTRunner(write_engine_manifest(tmp_path).path)
    with pytest.raises(MissingDependency, match="need TensorRT and an NVIDIA GPU; missing here: TensorRT"):
        runner.__enter__()
    assert not runner.is_active


@needs_no_tensorrt
def test_bench_engine_without_tensorrt_exits_2_with_one_line(tmp_path):
    engine = write_engine_manifest(tmp_path)
    result = CliRunner().invoke(cli, ["bench", "--engine", str(engine.path), "--iterations", "1", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "missing here: TensorRT" in result.stderr


# ----------------------------------------------------------------------------- CUDA versions (preflight)

STACK = CudaStack("2.14.1+cu130", "13.0", "580.65.06", "13.0", "11.4.0.106", (13,), "0.53.6")


def test_matching_cuda_stack_has_no_mismatch():
    assert STACK.mismatch() is None and STACK.driver_too_old() is None
    line = STACK.describe()
    assert "torch 2.14.1+cu130 (CUDA 13.0)" in line and "driver 580.65.06 (CUDA up to 13.0)" in line
    assert "TensorRT 11.4.0.106 (cu13)" in line and "polygraphy 0.53.6" in line


def test_a_cuda_12_driver_is_named_as_the_cause():
    """A CUDA-13 torch on a CUDA-12 driver sees no device: the one line says the driver is the cause."""
    old = dataclasses.replace(STACK, driver="550.54.15", driver_cuda="12.4")
    (line,) = [old.driver_too_old()]
    assert "driver 550.54.15 runs CUDA up to 12.4" in line and "built for CUDA 13.0" in line and "580" in line
    assert "tensorrt-cu12" in line and "\n" not in line
    assert old.mismatch().startswith("CUDA mismatch: ")


def test_tensorrt_wheels_for_another_cuda_are_a_mismatch():
    line = dataclasses.replace(STACK, tensorrt_cuda=(12,)).mismatch()
    assert line.startswith("CUDA mismatch: torch 2.14.1+cu130 is built for CUDA 13.0 but the TensorRT wheels are tensorrt-cu12")
    assert dataclasses.replace(STACK, tensorrt_cuda=()).mismatch() is None  # no TensorRT wheels: nothing to compare
    assert dataclasses.replace(STACK, torch_cuda=None).mismatch() is None  # a CPU torch: missing_requirements says so


def test_cuda_majors_of_the_tensorrt_wheel_names():
    names = ["tensorrt-cu13", "tensorrt_cu13_bindings", "tensorrt-cu13-libs", "tensorrt", "torch", "nvidia-cudnn-cu13"]
    assert cuda_majors_of_tensorrt(names) == {13}
    assert cuda_majors_of_tensorrt(["TensorRT-cu12-libs", "tensorrt_cu13"]) == {12, 13}


def test_this_machine_reports_its_stack():
    import importlib.metadata

    import torch

    stack = CudaStack.current()  # real torch, real package metadata, NVML when there is a driver
    assert stack.torch == torch.__version__ and stack.torch_cuda == torch.version.cuda
    assert stack.polygraphy == importlib.metadata.version("polygraphy")
    if NO_TENSORRT and stack.driver is None:  # no NVIDIA driver (this machine, CI): the plain reason
        assert missing_requirements()[-1] == "an NVIDIA GPU (CUDA sees no device)"


# ------------------------------------------------------------------------------- engine inspector

# The engine inspector's layer JSON, reduced to the keys read (polygraphy's inspect model reads the same ones):
# TensorRT 10 writes "Format/Datatype", TensorRT 11 splits it into "Datatype" and "Format".
TRT10_LAYERS = [
    {"Name": "conv1", "Outputs": [{"Name": "a", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    {"Name": "conv2", "Outputs": [{"Name": "b", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "fc", "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP32"}]},
    {"Name": "reformat", "Outputs": []},
]
TRT11_LAYERS = [
    {"Name": "conv1", "Outputs": [{"Name": "a", "Datatype": "Int8", "Format": "Thirty-two wide channel vectorized"}]},
    {"Name": "conv2", "Outputs": [{"Name": "b", "Datatype": "Half", "Format": "Channel major"}]},
    {"Name": "fc", "Outputs": [{"Name": "c", "Datatype": "Float", "Format": "Row major linear"}]},
]


def test_layer_datatypes_from_both_inspector_layouts():
    assert count_layer_datatypes(TRT10_LAYERS) == {"int8": 1, "fp16": 1, "fp32": 1, "other": 1}
    assert count_layer_datatypes(TRT11_LAYERS) == {"int8": 1, "fp16": 1, "fp32": 1}
    assert [tensor_datatype({"Datatype": t}) for t in ("BFloat16", "UInt8", "Int32", "")] == ["bf16", "uint8", "int32", None]


# ------------------------------------------------------------------ ONNX Runtime's TensorRT provider


def test_providers_come_in_onnx_runtimes_order_of_preference():
    assert parse_providers("cuda,tensorrt") == ("tensorrt", "cuda", "cpu")  # CUDA after TensorRT, whatever the order given
    assert parse_providers("tensorrt") == ("tensorrt", "cuda", "cpu")  # CUDA takes the nodes TensorRT does not
    assert parse_providers("cpu,cuda") == ("cuda", "cpu") and parse_providers("cpu") == ("cpu",)


@pytest.mark.parametrize(
    ("precision", "int8", "fp16"), [("int8", "True", "False"), ("fp16", "False", "True"), ("fp32", "False", "False")]
)
def test_tensorrt_provider_options_follow_the_model(tmp_path, precision, int8, fp16):
    options = OrtTensorrtOptions(profile=(1, 8, 32), cache_root=tmp_path)
    values = tensorrt_provider_options(precision, "input", (3, 224, 224), "ab" * 32, options)
    assert values == {
        "trt_int8_enable": int8,  # a Q/DQ model: else TensorRT's "int8 is not configured in the builder"
        "trt_fp16_enable": fp16,  # an AutoCast model: else its FP16 layers may run in FP32
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / ("ab" * 8)),  # per model content: ORT's own key ignores the weights
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
        "trt_profile_min_shapes": "input:1x3x224x224",
        "trt_profile_opt_shapes": "input:8x3x224x224",
        "trt_profile_max_shapes": "input:32x3x224x224",
    }


def test_tensorrt_provider_option_names_are_those_of_the_installed_onnxruntime():
    """Every option name is one the installed ONNX Runtime's TensorRT provider library knows (it parses them)."""
    import onnxruntime

    library = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not library.exists():
        pytest.skip("this onnxruntime build has no TensorRT provider library")
    data = library.read_bytes()
    names = tensorrt_provider_options("int8", "input", (3, 32, 32), "0" * 64, OrtTensorrtOptions(profile=(1, 1, 1)))
    assert [name for name in names if name.encode() + b"\0" not in data] == []


def test_the_batch_profile_of_the_tensorrt_provider():
    assert ort_tensorrt_options((1, 8), 32).profile == (1, 8, 32)  # validation batches of 32 (and a shorter last one)
    assert ort_tensorrt_options((1, 8, 64, 128), 32).profile == (1, 64, 128)  # opt as TensorRT's own engines
    assert ort_tensorrt_options((4, 8), 1, opt=4).profile == (1, 4, 8)


def test_tensorrt_refusal_names_the_versions():
    line = tensorrt_refusal("1.24.4", "Please install TensorRT libraries")
    assert line.startswith("ONNX Runtime 1.24.4 could not start its TensorRT execution provider (Please install TensorRT")
    assert "ONNX Runtime supports TensorRT 11 only from 1.27" in line and "--providers cuda" in line
    assert "TensorRT 11 only" not in tensorrt_refusal("1.27.0", "x") and "\n" not in line


@needs_no_tensorrt
def test_tensorrt_provider_that_cannot_start_is_one_line(fp32_onnx, tmp_path):
    """The real ONNX Runtime session, asked for its TensorRT provider on a machine without TensorRT: one line
    saying so (no silent fallback to CUDA or the CPU), with the options it was given."""
    from resnet_deploy.files import sha256_file

    runner = OrtRunner(
        fp32_onnx.path, "onnxruntime-tensorrt-fp32", "fp32", None, parse_providers("tensorrt"), 1,
        OrtTensorrtOptions(profile=(1, 4, 8), cache_root=tmp_path),
    )  # fmt: skip
    with pytest.raises(MissingDependency) as info:
        runner.__enter__()
    message = str(info.value)
    assert message.startswith("ONNX Runtime ") and "could not start its TensorRT execution provider" in message
    assert "TensorRT 11 only from 1.27" in message and "\n" not in message and not runner.is_active
    options = runner.describe()["tensorrt_options"]
    assert options["trt_engine_cache_path"] == str(tmp_path / sha256_file(fp32_onnx.path)[:16])
    assert Path(options["trt_engine_cache_path"]).is_dir()  # made beforehand: ONNX Runtime creates one level only
    assert options["trt_profile_max_shapes"] == "input:8x3x32x32" and options["trt_int8_enable"] == "False"


@needs_no_tensorrt
def test_bench_with_the_tensorrt_provider_exits_2_with_one_line(fp32_onnx):
    args = ["bench", "--onnx", str(fp32_onnx.path), "--providers", "tensorrt", "--iterations", "1", "-q"]
    result = CliRunner().invoke(cli, args)
    one_error_line(result, "could not start its TensorRT execution provider")


def test_onnxruntime_int8_on_cuda_is_labelled_simulated(built):
    runner = OrtRunner(Path("m.onnx"), "onnxruntime-cuda-int8", "int8", "onnxruntime", ("cuda", "cpu"))
    assert runner.describe()["int8_compute"] == SIMULATED_INT8 and "DequantizeLinear + FP32" in SIMULATED_INT8
    for precision, providers in (("int8", ("tensorrt", "cuda", "cpu")), ("fp16", ("cuda", "cpu")), ("int8", ("cpu",))):
        assert "int8_compute" not in OrtRunner(Path("m.onnx"), "x", precision, None, providers).describe()
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    row = dict(report["engines"][0], name="onnxruntime-cuda-int8", precision="int8")
    row["details"] = {**row["details"], "runtime": {**row["details"]["runtime"], "int8_compute": SIMULATED_INT8}}
    report["engines"] = [row]
    assert "| onnxruntime-cuda-int8 | int8 (simulated: DequantizeLinear + FP32 convs) |" in to_markdown(report)


# ------------------------------------------------------------------------------------ engine plan


def _config(tmp_path: Path, targets: tuple[Target, ...], providers: tuple[str, ...] = ("cpu",)) -> BuildConfig:
    """ONNX Runtime as the only CPU engine: OpenVINO's place in the plan is tested in tests/test_openvino.py."""
    return BuildConfig(
        arch="resnet18",
        weights=tmp_path / "w.pth",
        val_data=tmp_path,
        out=tmp_path / "out",
        targets=targets,
        providers=providers,
        engines=(Engine.ONNXRUNTIME,),
    )


def test_plan_onnxruntime_only(fp32_onnx, tmp_path):
    (spec,) = plan_engines([fp32_onnx], _config(tmp_path, (Target.ONNXRUNTIME,)))
    assert (spec.name, spec.backend, spec.final_path) == ("onnxruntime-fp32", "onnxruntime", tmp_path / "out" / "model.fp32.onnx")


def test_plan_tensorrt_builds_from_the_models_made_for_it(fp32_onnx, tmp_path):
    int8_trt = dataclasses.replace(fp32_onnx, path=tmp_path / "model.int8-tensorrt.onnx", precision="int8", target="tensorrt")
    int8_ort = dataclasses.replace(fp32_onnx, path=tmp_path / "model.int8.onnx", precision="int8", target="onnxruntime")
    fp16 = dataclasses.replace(fp32_onnx, path=tmp_path / "model.fp16.onnx", precision="fp16", target=None)
    config = _config(tmp_path, (Target.ONNXRUNTIME, Target.TENSORRT))
    specs = plan_engines([fp32_onnx, fp16, int8_ort, int8_trt], config)
    assert [(s.name, s.final_path.name) for s in specs] == [
        ("onnxruntime-fp32", "model.fp32.onnx"),
        ("tensorrt-fp32", "model.fp32.engine"),
        ("onnxruntime-fp16", "model.fp16.onnx"),
        ("tensorrt-fp16", "model.fp16.engine"),
        ("onnxruntime-int8", "model.int8.onnx"),  # U8S8 for ONNX Runtime: never given to TensorRT
        ("onnxruntime-int8-tensorrt", "model.int8-tensorrt.onnx"),  # the TensorRT INT8 model, checked on the CPU
        ("tensorrt-int8", "model.int8.engine"),
    ]


def test_plan_names_the_execution_provider(fp32_onnx, tmp_path):
    specs = plan_engines([fp32_onnx], _config(tmp_path, (Target.TENSORRT,), providers=("cuda", "cpu")))
    assert [s.name for s in specs] == ["onnxruntime-cuda-fp32", "tensorrt-fp32"]


def test_plan_gives_the_tensorrt_provider_the_batch_profile(fp32_onnx, tmp_path):
    config = _config(tmp_path, (Target.ONNXRUNTIME,), providers=parse_providers("tensorrt"))
    (spec,) = plan_engines([fp32_onnx], config)
    runner = spec.runner(config, tmp_path)
    assert spec.name == "onnxruntime-tensorrt-fp32" and runner.providers == ("tensorrt", "cuda", "cpu")
    assert runner.tensorrt.profile == (1, 8, config.batch_size)  # benchmark 1,8; validation batches of 32


def test_engine_names():
    assert engine_name("onnxruntime", "int8", "onnxruntime") == "onnxruntime-int8"
    assert engine_name("onnxruntime-cuda", "int8", "onnxruntime") == "onnxruntime-cuda-int8"
    assert engine_name("onnxruntime-tensorrt", "int8", "tensorrt") == "onnxruntime-tensorrt-int8-tensorrt"
    assert engine_name("tensorrt", "int8", "tensorrt") == "tensorrt-int8"


# ---------------------------------------------------------------------------------- latency fields


def test_latency_reports_gpu_compute_time_only_when_measured():
    samples = np.array([2.0, 2.2, 2.1, 2.5, 2.3])
    plain = Latency.from_samples(8, samples)
    assert plain.gpu_p50_ms is None and not any(key.startswith("gpu_") for key in plain.as_dict())
    timed = Latency.from_samples(8, samples, device_ms=np.array([1.0, 1.1, 1.2, 1.0, 1.4]))
    assert timed.gpu_p50_ms == pytest.approx(1.1) and timed.gpu_mean_ms == pytest.approx(1.14)
    assert timed.as_dict()["gpu_p99_ms"] == pytest.approx(np.percentile([1.0, 1.1, 1.2, 1.0, 1.4], 99))
    assert timed.as_dict()["p50_ms"] == pytest.approx(2.2)  # end-to-end stays where it was


def test_markdown_shows_gpu_compute_time_and_skipped_engines(built):
    _, _, out = built
    report = json.loads((out / "report.json").read_text())
    engine = report["engines"][0]
    row = dict(engine["latency"][0], gpu_p50_ms=0.5, gpu_p99_ms=0.75, gpu_mean_ms=0.6)
    skipped = dict(engine, name="tensorrt-fp32", backend="tensorrt", accuracy=None, latency=[], error="not built: no GPU")
    report["engines"] = [dict(engine, latency=[row]), skipped]
    text = to_markdown(report)
    assert f"| {row['p50_ms']:.2f} (0.50) | {row['p99_ms']:.2f} (0.75) |" in text
    assert "| tensorrt-fp32 | fp32 |  | not built: no GPU |" in text and "GPU compute time alone in brackets" in text


# ---------------------------------------------------------------------- build without TensorRT/GPU


@needs_no_tensorrt
def test_build_target_tensorrt_without_tensorrt_keeps_the_onnx_results(workload, tmp_path):
    out = tmp_path / "out"
    args = build_args(workload, out, "--target", "tensorrt", "--batch-sizes", "1,2", "--engines", "onnxruntime")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: tensorrt-fp32 not built: TensorRT engines need TensorRT")
    assert "missing here: TensorRT" in notes[0] and "an NVIDIA GPU" in notes[0] and "--require-engine" in notes[0]
    report = json.loads((out / "report.json").read_text())
    ort, trt = report["engines"]
    assert ort["name"] == "onnxruntime-fp32" and ort["accuracy"]["top1_agreement"] == 1.0 and ort["latency"]
    assert trt["name"] == "tensorrt-fp32" and trt["backend"] == "tensorrt" and trt["precision"] == "fp32"
    assert trt["path"] is None and trt["accuracy"] is None and trt["latency"] == []
    assert trt["error"].startswith("not built: TensorRT engines need TensorRT and an NVIDIA GPU")
    assert report["notes"] == [notes[0].removeprefix("note: ")] and report["failures"] == []
    assert "engines" in report["stages"] and not list(out.glob("*.engine"))
    assert "not built" in result.stdout  # the summary table shows the row too
    assert "| tensorrt-fp32 | fp32 |" in (out / "report.md").read_text()


@needs_no_tensorrt
def test_require_engine_without_tensorrt_exits_2_before_writing(workload, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, build_args(workload, out, "--target", "tensorrt", "--require-engine"))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --require-engine: TensorRT engines need")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "tpu"], "--target: unknown value 'tpu'"),
        (["--require-engine"], "--require-engine applies to TensorRT engines; add --target tensorrt"),
        (["--target", "tensorrt", "--opt-batch-size", "64"], "--opt-batch-size 64 is outside 1..4"),
        (["--target", "tensorrt", "--builder-optimization-level", "7"], "--builder-optimization-level must be between 0 and 5"),
        (["--target", "tensorrt", "--hardware-compat", "volta"], "--hardware-compat: unknown value 'volta'"),
        (["--target", "tensorrt", "--workspace-mib", "0"], "--workspace-mib must be between 1"),
    ],
)
def test_bad_tensorrt_build_options_exit_2(workload, tmp_path, extra, message):
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", *extra))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []
