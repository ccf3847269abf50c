"""Settings declared once (options.Setting): the flags, the TOML keys, the ranges and the option types derive from them."""

from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner

from resnet_deploy import config
from resnet_deploy.calibration.methods import CalibrationOptions
from resnet_deploy.cli import cli
from resnet_deploy.cli.build import build
from resnet_deploy.cli.validate import bench, validate
from resnet_deploy.engines import registry
from resnet_deploy.engines.openvino import OpenVINOOptions
from resnet_deploy.engines.ort import OrtOptions
from resnet_deploy.engines.trt import TensorRTOptions
from resnet_deploy.errors import UserError
from resnet_deploy.models import ModelOptions
from resnet_deploy.options import AccuracyTarget, BenchmarkOptions, SelectionOptions

# `build` flags that are not TOML keys: the file itself, what a run replaces or writes besides the build, and flags
# that were never keys (a file sets no booleans of TensorRT's).
FLAG_ONLY = {
    "config_file", "force", "triton_repo", "overrides", "junit", "summary", "quiet", "debug",
    "require_engine", "version_compatible", "tf32", "cuda_graph",
}  # fmt: skip
RANGED = [s for s in config.SETTINGS if s.limits is not None]
CONFIGURABLE = (OpenVINOOptions, TensorRTOptions, OrtOptions, BenchmarkOptions, CalibrationOptions, SelectionOptions)
BUILD_ARGS = ["build", "--arch", "resnet18", "--weights", "w.pth", "--val-data", "val", "--out", "out"]


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params}


def test_each_setting_is_declared_once():
    keys = [s.key for s in config.SETTINGS]
    assert len(set(keys)) == len(keys), sorted(k for k in keys if keys.count(k) > 1)


def test_every_toml_key_is_a_build_flag_of_the_same_kind():
    params = _params(build)
    assert set(config.TOML_SETTINGS) <= set(params)
    assert set(params) - set(config.TOML_SETTINGS) == FLAG_ONLY
    for key, setting in config.TOML_SETTINGS.items():
        param = params[key]
        assert param.opts == [setting.flag] and param.help == setting.help, key
        if setting.kind is bool:
            assert param.is_flag, key
        else:
            expected = {"Path": click.Path, "str": click.types.StringParamType, "int": click.types.IntParamType}
            assert isinstance(param.type, expected.get(setting.kind.__name__, click.types.FloatParamType)), key
            assert bool(param.show_default) is (setting.default is not None), key
            if setting.default is not None:
                assert param.default == setting.default, key


def test_engine_flags_come_from_the_registry():
    """Every CPU runtime's settings (ONNX Runtime's --providers placed by each command) are flags of build, validate
    and bench."""
    keys = {s.key for k in registry.KINDS if k.cpu_runtime for s in k.settings}
    assert {"openvino_streams", "providers"} <= keys
    for command in (build, validate, bench):
        assert keys <= set(_params(command)), command.name


@pytest.mark.parametrize("kind", CONFIGURABLE + (AccuracyTarget, ModelOptions))
def test_flag_defaults_build_the_types_defaults(kind):
    """The flags' defaults (what click passes when none is given) make the type's own defaults."""
    values = {s.key: s.default for s in kind.SETTINGS}
    if kind is AccuracyTarget:
        values["min_top1_agreement"] = 0.99
        assert kind.from_values(values) == AccuracyTarget(min_top1_agreement=0.99)
    else:
        assert kind.from_values(values) == kind()


@pytest.mark.parametrize("setting", RANGED, ids=lambda s: s.key)
def test_a_range_is_checked_as_a_toml_key_and_as_a_flag(setting, tmp_path):
    low, high = setting.limits
    bad = low - 1
    (tmp_path / "build.toml").write_text(f"{setting.key} = {bad}\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"key '{setting.key}' must be between {low} and {high}, got {bad}"):
        config.load_toml_options(tmp_path / "build.toml")
    with CliRunner().isolated_filesystem(tmp_path):
        result = CliRunner().invoke(cli, [*BUILD_ARGS, setting.flag, str(bad)])
    assert result.exit_code == 2, result.output
    assert f"error: {setting.flag} must be between {low} and {high}, got {bad}" in result.output
    # the same check guards the option type built directly
    owner = next((k for k in CONFIGURABLE + (AccuracyTarget,) if setting in k.SETTINGS), None)
    if owner is not None:
        extra = {"min_top1_agreement": 0.99} if owner is AccuracyTarget else {}
        with pytest.raises(UserError, match=f"{setting.flag} must be"):
            owner(**extra, **{setting.field or setting.key: bad})


@pytest.mark.parametrize("key", sorted(config.PATH_KEYS))
def test_a_path_key_is_taken_relative_to_the_file(key, tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "build.toml").write_text(f'{key} = "sub/x"\n', encoding="utf-8")
    assert config.load_toml_options(folder / "build.toml") == {key: os.path.abspath(folder / "sub" / "x")}
    assert config.TOML_SETTINGS[key].toml_type is str
