"""Hostile and broken inputs: nothing executes, every refusal is one line saying what to do (exit 2).

Checkpoints carrying code, damaged checkpoints and safetensors headers, files that are not ONNX, ONNX
whose external data points outside its folder, NaN/Inf weights, and bad config files.
Image folders are in test_images_hostile.py, interruption in test_interrupt.py, fuzzing in test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from resnet_deploy.artifacts import read_onnx
from resnet_deploy.cli import cli
from resnet_deploy.config import load_toml_options
from resnet_deploy.errors import UserError
from resnet_deploy.examples import digits
from resnet_deploy.models import read_state_dict

from .conftest import build_args, one_error_line, run_cli

# ------------------------------------------------------------------------------ code in checkpoints


class _System:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_payload(path, marker, kind: str) -> None:
    payload = {"fc.weight": _System(marker), "fc.bias": torch.zeros(10)}
    with open(path, "wb") as f:
        if kind == "torch.save":
            torch.save(payload, f)
        elif kind == "torch.save legacy":
            torch.save(payload, f, _use_new_zipfile_serialization=False)
        elif kind == "pickle":  # a plain pickle of the payload alone, protocol 0 (text opcodes)
            pickle.dump(_System(marker), f, protocol=0)
        else:  # a plain pickle of the dict, protocol 5 (frames torch's weights-only reader refuses outright)
            pickle.dump(payload, f, protocol=5)


def test_the_payload_is_live(tmp_path):
    """Control: unpickling the file for real does run the command (so the tests below can fail)."""
    marker = tmp_path / "ran"
    _write_payload(tmp_path / "evil.pth", marker, "pickle")
    with open(tmp_path / "evil.pth", "rb") as f:
        pickle.load(f)  # noqa: S301 - the point of this control
    assert marker.exists()


@pytest.mark.parametrize(
    ("name", "kind", "message"),  # the messages show which reader refused it
    [
        ("evil.pth", "torch.save", "posix.system: code that would run on loading"),
        ("evil.pt", "torch.save legacy", "posix.system: code that would run on loading"),
        ("evil.pth", "pickle", "posix.system: code that would run on loading"),
        ("evil.ckpt", "pickle 5", "not a readable PyTorch checkpoint (Unsupported operand 149)"),
        ("evil.safetensors", "torch.save", "not a valid safetensors file"),
        ("evil.safetensors", "pickle 5", "not a valid safetensors file"),
    ],
)
def test_pickled_os_system_never_runs(tmp_path, name, kind, message):
    marker = tmp_path / "ran"
    path = tmp_path / name
    _write_payload(path, marker, kind)
    with pytest.raises(UserError, match=re.escape(message)):
        read_state_dict(path)
    assert not marker.exists()


def test_pickled_os_system_never_runs_through_the_console_script(tmp_path, workload):
    marker = tmp_path / "ran"
    for name, kind in (("evil.pth", "torch.save"), ("evil.safetensors", "torch.save")):
        _write_payload(tmp_path / name, marker, kind)
    for name in ("evil.pth", "evil.safetensors"):
        proc = run_cli("fold", "--arch", "resnet18", "--weights", str(tmp_path / name), "--out", str(tmp_path / "f.safetensors"))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert not marker.exists()
    assert not (tmp_path / "f.safetensors").exists()


# ------------------------------------------------------------------------ damaged weights files


def _safetensors_cases(tmp_path) -> dict[str, bytes]:
    save_file({"a": torch.ones(4, 4), "b": torch.zeros(3)}, str(tmp_path / "ok.safetensors"))
    raw = (tmp_path / "ok.safetensors").read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header, body = json.loads(raw[8 : 8 + size]), raw[8 + size :]

    def rebuilt(h) -> bytes:
        data = h if isinstance(h, bytes) else json.dumps(h).encode()
        return struct.pack("<Q", len(data)) + data + body

    a = header["a"]
    return {
        "header length past the end": struct.pack("<Q", len(raw)) + raw[8:],
        "header length of 2**63": struct.pack("<Q", 2**63) + raw[8:],
        "header not JSON": rebuilt(b"{not json}"),
        "header a list": rebuilt([1, 2, 3]),
        "offsets past the data": rebuilt({**header, "a": {**a, "data_offsets": [0, 10**6]}}),
        "offsets reversed": rebuilt({**header, "a": {**a, "data_offsets": [64, 0]}}),
        "shape larger than the data": rebuilt({**header, "a": {**a, "shape": [400, 400]}}),
        "unknown dtype": rebuilt({**header, "a": {**a, "dtype": "Q99"}}),
        "data truncated": raw[:-10],
        "four bytes": raw[:4],
    }


def test_safetensors_with_bad_headers_are_refused(tmp_path):
    for case, data in _safetensors_cases(tmp_path).items():
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data)
        with pytest.raises(UserError, match="not a valid safetensors file.*save_file") as info:
            read_state_dict(path)
        assert "\n" not in str(info.value), case


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_checkpoints_exit_2_through_the_cli(tmp_path, workload, cut):
    data = workload.weights.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * cut)])
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--weights", str(path)))
    one_error_line(result, "truncated or corrupted")
    assert not (tmp_path / "out").exists()


def test_a_flipped_byte_in_the_weights_is_caught(tmp_path, workload):
    """torch.load does not check the zip's CRCs: a damaged tensor would load silently without our check."""
    data = bytearray(workload.weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    path = tmp_path / "flipped.pth"
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--weights", str(path)))
    one_error_line(result, "is corrupted (weights/data/")


def test_a_zip_bomb_checkpoint_is_refused_before_torch_load(tmp_path):
    import zipfile

    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MiB that deflate to ~64 KiB
    with pytest.raises(UserError, match=r"would expand to 67108864 bytes .*zip bomb"):
        read_state_dict(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weights_are_named_through_the_cli(tmp_path, workload, value):
    state = torch.load(workload.weights, weights_only=True)
    state["layer3.0.conv2.weight"][1, 2, 0, 0] = value
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--weights", str(path)))
    one_error_line(result, "tensor 'layer3.0.conv2.weight' holds 1 NaN/Inf values")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- ONNX files


def test_files_that_are_not_onnx_are_refused(tmp_path, fp32_onnx, workload):
    real = fp32_onnx.path.read_bytes()
    cases = {
        "empty": b"",
        "text": b"hello world\n",
        "a protobuf that is not a model": b"\x08\x07",  # parses as ModelProto(ir_version=7), nothing else
        "random bytes": np.random.default_rng(0).bytes(4096),
        "truncated": real[: len(real) // 3],
        "a checkpoint": workload.weights.read_bytes()[:100_000],
    }
    for case, data in cases.items():
        path = tmp_path / "model.onnx"
        path.write_bytes(data)
        with pytest.raises(UserError, match=r"(is not an ONNX model|cannot load)") as info:
            read_onnx(path)
            raise AssertionError(f"{case}: accepted")  # only reached when read_onnx let it through
        assert "\n" not in str(info.value), case


def _external_copy(fp32_onnx, folder):
    """The digits model saved with its weights in `weights.bin` beside it (onnx's external data format)."""
    import onnx

    folder.mkdir()
    proto = onnx.load(str(fp32_onnx.path))
    onnx.save(proto, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin")
    return folder / "model.onnx"


def _relocated(path, location=None, offset=None):
    """Rewrite every external-data entry of the model at `path` (without loading its data)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and location is not None:
                entry.value = location
            if entry.key == "offset" and offset is not None:
                entry.value = str(offset)
    onnx.save(proto, str(path))
    return path


def test_onnx_with_external_data_in_its_folder_runs(fp32_onnx, tmp_path, val_images):
    from resnet_deploy.engines.ort import OrtRunner

    path = _external_copy(fp32_onnx, tmp_path / "ext")
    assert read_onnx(path).graph.initializer[0].data_location == 1  # EXTERNAL: the check saw real external data
    with OrtRunner(path, "ext", "fp32") as runner, OrtRunner(fp32_onnx.path, "inline", "fp32") as inline:
        np.testing.assert_array_equal(runner.infer(val_images[:4]), inline.infer(val_images[:4]))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("../../etc/passwd", "outside the model's folder"),
        ("/etc/passwd", "absolute path"),
        ("sub/../../weights.bin", "outside the model's folder"),
        ("symlink", "symbolic link"),
        ("linked folder", "pointing outside the model's folder"),
        ("hard link", "several hard links"),
        ("missing.bin", "cannot be read"),
        ("folder", "not a regular file"),
        ("offset past the end", "beyond the end of the file"),
    ],
)
def test_onnx_external_data_outside_its_folder_is_refused(fp32_onnx, tmp_path, case, message):
    path = _external_copy(fp32_onnx, tmp_path / "ext")
    folder = path.parent
    if case == "symlink":
        (folder / "link.bin").symlink_to(folder / "weights.bin")
        _relocated(path, "link.bin")
    elif case == "linked folder":
        (folder / "etc").symlink_to("/etc")
        _relocated(path, "etc/passwd")
    elif case == "hard link":
        os.link(folder / "weights.bin", tmp_path / "elsewhere.bin")
    elif case == "folder":
        (folder / "sub").mkdir()
        _relocated(path, "sub")
    elif case == "offset past the end":
        _relocated(path, offset=10**9)
    else:
        _relocated(path, case)
    with pytest.raises(UserError, match=message) as info:
        read_onnx(path)
    assert "refused" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["validate", "bench"])
def test_cli_checks_onnx_before_onnx_runtime_reads_it(fp32_onnx, tmp_path, workload, command, monkeypatch):
    import onnxruntime

    def never(*args, **kwargs):
        raise AssertionError("ONNX Runtime was handed an unchecked model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", never)
    path = _relocated(_external_copy(fp32_onnx, tmp_path / "ext"), "../../etc/passwd")
    common = ["--arch", "resnet18", "--weights", str(workload.weights), "--onnx", str(path), "--quiet"]
    if command == "validate":
        args = ["validate", *common, "--input-size", "3x32x32", "--val-data", str(workload.val)]
    else:
        args = ["bench", *common]
    one_error_line(CliRunner().invoke(cli, args), "outside the model's folder")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    args[args.index(str(path))] = str(tmp_path / "junk.onnx")
    one_error_line(CliRunner().invoke(cli, args), "is not an ONNX model")


def test_validate_refuses_an_onnx_of_another_input_size(fp32_onnx, workload):
    args = ["validate", "--arch", "resnet18", "--weights", str(workload.weights), "--onnx", str(fp32_onnx.path),
            "--val-data", str(workload.val), "--quiet"]  # fmt: skip
    one_error_line(CliRunner().invoke(cli, args), "takes 3x32x32 images, not 3x224x224; pass --input-size 3x32x32")


# ---------------------------------------------------------------------- stage files (sidecars)


@pytest.fixture(scope="module")
def folded_digits(workload, tmp_path_factory):
    """The digits model folded by `resnet-deploy fold` (the file and its sidecar)."""
    folded = tmp_path_factory.mktemp("folded") / "m.folded.safetensors"
    result = CliRunner().invoke(cli, ["fold", "--arch", "resnet18", "--weights", str(workload.weights),
                                      "--input-size", "3x32x32", "--out", str(folded), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folded


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"num_classes": 10**9}, "num_classes must be between 1 and 1000000"),  # would allocate 2 TB
        ({"num_classes": "ten"}, "missing or invalid field"),
        ({"arch": None}, "missing or invalid field"),
        ({"preprocess": {"input_size": [3, 32, 32]}}, "missing or invalid field (KeyError('interpolation'))"),
        ({"preprocess": None}, "missing or invalid field"),
        ({"fold": 3}, "missing or invalid field"),
    ],
)
def test_forged_stage_sidecar_is_refused_before_use(tmp_path, folded_digits, edit, message):
    """A sidecar's sha256 only says the file is the one described, not that the description is sane."""
    from resnet_deploy.artifacts import FoldedModelArtifact, sidecar_path

    folded = tmp_path / folded_digits.name
    shutil.copy(folded_digits, folded)
    meta = json.loads(sidecar_path(folded_digits).read_text())
    sidecar_path(folded).write_text(json.dumps({**meta, **edit}))
    with pytest.raises(UserError, match=re.escape(message)):
        FoldedModelArtifact.read(folded)
    result = CliRunner().invoke(cli, ["export", "--folded", str(folded), "--out", str(tmp_path / "m.onnx"), "--quiet"])
    one_error_line(result, message)
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------ config files


def _toml(tmp_path, text: str):
    path = tmp_path / "build.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('wieghts = "w.pth"', "unknown key 'wieghts'; valid keys: arch, baseline, batch_size"),
        ("[build]\narch = 'resnet18'", "unknown key 'build'"),
        ("arch = 18", "key 'arch' must be a string, got int 18"),
        ("threads = '2'", "key 'threads' must be a whole number, got str '2'"),
        ("threads = true", "key 'threads' must be a whole number, got bool True"),
        ("threads = 2.5", "key 'threads' must be a whole number, got float 2.5"),
        ("batch_sizes = [1, 8]", "key 'batch_sizes' must be a string, got list [1, 8]"),
        ("threads = 0", "key 'threads' must be between 1 and 1024, got 0"),
        ("threads = 9223372036854775807", "key 'threads' must be between 1 and 1024"),
        ("batch_size = 0", "key 'batch_size' must be between 1 and 4096, got 0"),
        ("batch_size = 100000", "key 'batch_size' must be between 1 and 4096"),
        ("num_classes = -3", "key 'num_classes' must be between 1 and"),
        ("warmup = -1", "key 'warmup' must be between 0 and"),
        ("iterations = 0", "key 'iterations' must be between 1 and"),
        ("opset = 11", "key 'opset' must be between 18 and"),
        ("precision = 'int4'", "key 'precision': unknown value 'int4'; valid values: fp32, fp16, int8"),
        ("target = 'openvino'", "key 'target': unknown value 'openvino'"),
        ("providers = 'rocm'", "key 'providers': unknown execution provider 'rocm'"),
        ("input_size = '3x32'", "key 'input_size': expected CxHxW"),
        ("input_size = '3x100000x32'", "key 'input_size': expected 3 channels and 8..4096"),
        ("batch_sizes = '0,8'", "key 'batch_sizes': expected numbers between 1 and 4096"),
        ("batch_sizes = '1,x'", "key 'batch_sizes': expected whole numbers"),
        ("weights = ''", "key 'weights' must not be empty"),
        ("arch = 'resnet18'\narch = 'resnet50'", "is not valid TOML"),
        ("arch = ", "is not valid TOML"),
    ],
)
def test_bad_config_values_name_the_key(tmp_path, text, message):
    with pytest.raises(UserError, match=None) as info:
        load_toml_options(_toml(tmp_path, text))
    assert message in str(info.value) and str(tmp_path / "build.toml") in str(info.value)


def test_config_files_that_cannot_be_read(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'arch = "r\xe9snet"\n')
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml_options(tmp_path / "latin1.toml")
    with pytest.raises(UserError, match="is a folder"):
        load_toml_options(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_toml_options(tmp_path / "none.toml")


def test_bad_config_through_the_cli(tmp_path, workload):
    config = _toml(tmp_path, f'arch = "resnet18"\nweights = "{workload.weights}"\nval_data = "{workload.val}"\nthreads = 0\n')
    result = CliRunner().invoke(cli, ["build", "--config", str(config), "--out", str(tmp_path / "o")])
    one_error_line(result, "key 'threads' must be between 1 and 1024, got 0")
    _toml(tmp_path, f'arch = "resnet18"\nweights = "{workload.weights}"\nval_data = "{workload.val}"\ntarget = "tpu"\n')
    result = CliRunner().invoke(cli, ["build", "--config", str(config), "--out", str(tmp_path / "o")])
    one_error_line(result, "key 'target': unknown value 'tpu'")
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "o", "--batch-size", "0"))
    one_error_line(result, "--batch-size must be between 1 and 4096, got 0")
    assert not (tmp_path / "o").exists()


def test_config_relative_paths_are_taken_from_its_folder(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    options = load_toml_options(_toml(sub, 'weights = "../w.pth"\nval_data = "val"\narch = "resnet18"'))
    assert options["weights"] == str(tmp_path / "w.pth") and options["val_data"] == str(sub / "val")
    assert options["arch"] == digits.ARCH
