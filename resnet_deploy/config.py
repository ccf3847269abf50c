"""A build's settings (`BuildConfig`) and its TOML file: composes the option types defined in the layers below.

The TOML keys are the settings (options.Setting) of the build's own options below (`BUILD_SETTINGS`) and those of
the option types a build composes (`SETTINGS`): each engine kind's, the benchmark's, calibration's, the accuracy
target's, the selection's and the model's. A new setting of one of those types is a TOML key and a flag at once.
"""

from __future__ import annotations

import enum
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration.methods import CalibrationOptions
from .engines import registry
from .engines.kind import EngineSettings
from .engines.openvino import OpenVINOOptions
from .engines.ort import OrtOptions
from .engines.trt import TensorRTOptions
from .errors import MissingDependency, UserError
from .isa import CpuKind, parse_cpu
from .models import ModelOptions
from .options import (
    MAX_BATCH,
    NUM_CLASSES,
    AccuracyTarget,
    BenchmarkOptions,
    Precision,
    SelectionOptions,
    Setting,
    Target,
    parse_enum_list,
    parse_input_size,
)

if TYPE_CHECKING:
    from .gates import Gates


# A CPU runtime that runs the ONNX models (`--engines`), one member per such kind of the engine registry
# (Engine.ONNXRUNTIME, Engine.OPENVINO); TensorRT engines come with `--target tensorrt`.
Engine = enum.StrEnum("Engine", {k.name.upper(): k.name for k in registry.KINDS if k.cpu_runtime}, module=__name__)


def default_engines() -> tuple[Engine, ...]:
    """ONNX Runtime, plus every other CPU runtime that can run here (quietly left out when not)."""
    return tuple(e for e in Engine if e is Engine.ONNXRUNTIME or registry.kind(e.value).available() is None)


def parse_engines(text: str | None) -> tuple[Engine, ...]:
    """'onnxruntime,openvino' -> (Engine.ONNXRUNTIME, Engine.OPENVINO); None or '' -> the default.

    An engine asked for by name that cannot run here is an error (exit 2), not a silent skip.
    """
    if text is None or not text.strip():
        return default_engines()
    engines = parse_enum_list(Engine, text, "--engines")
    for engine in engines:
        missing = registry.kind(engine.value).available()
        if missing:
            raise MissingDependency(f"--engines {engine.value}: {missing}, or leave {engine.value} out of --engines")
    return engines


def check_engines(engines: tuple[Engine, ...], openvino: OpenVINOOptions) -> None:
    """The CPU engines and OpenVINO's options fit together (build, validate and bench)."""
    if not engines:
        raise UserError(f"--engines: give at least one of {', '.join(Engine)}")
    if openvino.bf16 and Engine.OPENVINO not in engines:
        raise UserError("--openvino-bf16 adds an OpenVINO engine; add openvino to --engines")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `resnet-deploy build` needs. Paths are resolved by the caller."""

    arch: str | None  # None: from a hub folder's config.json (--weights DIR)
    weights: Path
    val_data: Path
    out: Path
    num_classes: int | None = None
    input_size: tuple[int, int, int] | None = None
    calib_data: Path | None = None
    precisions: tuple[Precision, ...] = (Precision.FP32,)
    targets: tuple[Target, ...] = (Target.ONNXRUNTIME,)
    providers: tuple[str, ...] = ("cpu",)
    engines: tuple[Engine, ...] = field(default_factory=default_engines)  # CPU runtimes that run the ONNX models
    openvino: OpenVINOOptions = field(default_factory=OpenVINOOptions)
    threads: int | None = None
    batch_size: int = 32
    opset: int | None = None
    benchmark: BenchmarkOptions = field(default_factory=BenchmarkOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    require_engine: bool = False  # no TensorRT/GPU for --target tensorrt is an error (exit 2), not a skip
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    force: bool = False
    gates: Gates | None = None  # thresholds applied to the report; failures make the build exit 1
    baseline: Path | None = None  # an earlier report.json for max_latency_regression_pct
    accuracy_target: AccuracyTarget | None = None  # INT8 mixed-precision search (--max-top1-drop, ...)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    cpu: CpuKind | None = None  # the CPU kind onnxruntime-target INT8 is made for (--cpu; None: this machine's)
    model_options: ModelOptions = field(default_factory=ModelOptions)  # --ema, --mean/--std/..., --labels
    # the options of every other engine kind with settings (`engine_options_of`): at most one per options type
    engine_options: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.accuracy_target is not None and Precision.INT8 not in self.precisions:
            raise UserError(
                "--max-top1-drop / --min-top1-agreement choose which nodes INT8 keeps in higher precision; "
                "add int8 to --precision"
            )
        reduced = [p for p in self.precisions if p is not Precision.FP32]
        if reduced and self.calib_data is None:
            names = ",".join(p.value for p in reduced)
            raise UserError(
                f"--precision {names} needs --calib-data: INT8 ranges and FP16's overflow check come from calibration images"
            )
        check_engines(self.engines, self.openvino)
        if self.openvino.bf16 and Precision.FP32 not in self.precisions:
            raise UserError("--openvino-bf16 runs the FP32 model in bfloat16; add fp32 to --precision")

    def engine_settings(self) -> EngineSettings:
        """What the engines of this build need: --engines (and TensorRT with --target tensorrt), each kind's options."""
        kinds = tuple(e.value for e in self.engines) + ((Target.TENSORRT.value,) if Target.TENSORRT in self.targets else ())
        return EngineSettings(
            kinds=kinds,
            threads=self.threads,
            batch_sizes=self.benchmark.batch_sizes,
            largest_batch=self.batch_size,
            opt_batch=self.tensorrt.opt_batch_size,
            folder=self.out.absolute(),
            options=(OrtOptions(self.providers), self.openvino, self.tensorrt, *self.engine_options),
        )


MAX_THREADS = 1024

# The build's own settings; each is a flag of `resnet-deploy build` and (unless toml=False) a key of its TOML file.
ARCH = Setting("arch", str, "ResNet-family architecture (timm or torchvision name, e.g. resnet50; a hub folder names its own).")
WEIGHTS = Setting(
    "weights",
    Path,
    "Weights: a state_dict or training checkpoint (.pth/.pt/.ckpt/.pth.tar/.safetensors: Lightning, timm train.py, "
    "torchvision references) or a hub folder (config.json + model.safetensors).",
)
VAL_DATA = Setting("val_data", Path, "Validation images (ImageFolder or flat) or .npz.")
CALIB_DATA = Setting("calib_data", Path, "Calibration images or .npz (INT8; also used for checks).")
OUT = Setting("out", Path, "Output folder.")
INPUT_SIZE = Setting("input_size", str, "CxHxW, e.g. 3x224x224 (default: the arch's).", parse=parse_input_size)
PRECISION = Setting(
    "precision",
    str,
    "Comma-separated: fp32, fp16, int8.",
    "fp32",
    parse=lambda text, option: parse_enum_list(Precision, text, option),
)
TARGET = Setting(
    "target",
    str,
    "Who consumes the models, comma-separated: onnxruntime, tensorrt (INT8 recipe per target; tensorrt adds engines).",
    "onnxruntime",
    parse=lambda text, option: parse_enum_list(Target, text, option),
)
CPU = Setting(
    "cpu",
    str,
    "CPU the onnxruntime-target INT8 model is for: host (this machine's kind), vnni (x86 with AVX-512 VNNI/AVX-VNNI/AMX, "
    "ARM64: 8-bit weights) or no-vnni (x86 AVX2/AVX-512 without VNNI: 7-bit weights, whose U8S8 sums do not saturate).",
    "host",
    parse=parse_cpu,
)
THREADS = Setting(
    "threads", int, "CPU threads for PyTorch, ONNX Runtime and OpenVINO (default: all cores).", limits=(1, MAX_THREADS)
)
ENGINES = Setting(
    "engines",
    str,
    "CPU engines that run the ONNX models, comma-separated: onnxruntime, openvino "
    "(default: onnxruntime, plus openvino when it is installed).",
    parse=lambda text, option: parse_enum_list(Engine, text, option),
)
BATCH_SIZE = Setting("batch_size", int, "Batch size for validation.", 32, limits=(1, MAX_BATCH))
# opset 18: the dynamo exporter's minimum; the export stage checks the exporter's maximum
OPSET = Setting("opset", int, "ONNX opset (default: the exporter's).", limits=(18, 1000))
REQUIRE_ENGINE = Setting(
    "require_engine", bool, "Fail (exit 2) instead of skipping TensorRT engines without TensorRT/GPU.", toml=False
)
GATES = Setting("gates", Path, "TOML file of thresholds per engine name or glob.")
BASELINE = Setting("baseline", Path, "Earlier report.json for max_latency_regression_pct.")

BUILD_SETTINGS: tuple[Setting, ...] = (
    ARCH, WEIGHTS, VAL_DATA, CALIB_DATA, OUT, NUM_CLASSES, INPUT_SIZE, PRECISION, TARGET, CPU, THREADS, ENGINES,
    BATCH_SIZE, OPSET, REQUIRE_ENGINE, GATES, BASELINE,
)  # fmt: skip

# Every setting of a build: its own, each engine kind's (the registry's options types), then the other option types.
SETTINGS: tuple[Setting, ...] = (
    *BUILD_SETTINGS,
    *(s for k in registry.KINDS for s in k.settings),
    *BenchmarkOptions.SETTINGS,
    *CalibrationOptions.SETTINGS,
    *AccuracyTarget.SETTINGS,
    *SelectionOptions.SETTINGS,
    *ModelOptions.SETTINGS,
)

# The keys of a build TOML file, the ranges of its numbers and which keys are paths: derived from SETTINGS.
TOML_SETTINGS: dict[str, Setting] = {s.key: s for s in SETTINGS if s.toml}
_TOML_KEYS: dict[str, tuple[type | tuple[type, ...], Any]] = {k: (s.toml_type, s.parse) for k, s in TOML_SETTINGS.items()}
PATH_KEYS = frozenset(k for k, s in TOML_SETTINGS.items() if s.kind is Path)
LIMITS: dict[str, tuple[int, int]] = {s.key: s.limits for s in SETTINGS if s.limits is not None}


def engine_options_of(values: dict[str, Any]) -> tuple[Any, ...]:
    """The options of the engine kinds whose settings have no BuildConfig field (a new engine's), from flag values."""
    own = (OrtOptions, OpenVINOOptions, TensorRTOptions)  # BuildConfig's providers, openvino and tensorrt
    return tuple(k.options_type.from_values(values) for k in registry.KINDS if k.settings and k.options_type not in own)


def load_toml_options(path: Path) -> dict[str, Any]:
    """Read a build TOML file into CLI option values; unknown keys, wrong types and bad values raise UserError.

    Every message names the file and the key. Relative paths in the file are taken relative to its folder.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the --config path") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder; give a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML ({exc}); fix the file") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key not in TOML_SETTINGS:
            valid = ", ".join(sorted(TOML_SETTINGS))
            raise UserError(f"config file {path}: unknown key {key!r}; valid keys: {valid}")
        setting = TOML_SETTINGS[key]
        expected = setting.toml_type
        label = f"config file {path}: key {key!r}"
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            kind = {int: "a whole number", str: "a string", bool: "true or false"}.get(expected, "a number")
            raise UserError(f"{label} must be {kind}, got {type(value).__name__} {value!r}"[:300])
        setting.check_toml(value, label)
        if setting.kind is Path:
            value = os.path.abspath(Path(path).parent / value)
        options[key] = value
    return options
