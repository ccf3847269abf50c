"""A build's settings (`BuildConfig`) and its TOML file: composes the option types defined in the layers below."""

from __future__ import annotations

import enum
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .calibration.methods import CalibrationOptions, check_percentile, check_regex, parse_method
from .data import (
    PreprocessOverrides,  # noqa: F401 - re-exported
    check_crop_pct,
    parse_crop_mode,
    parse_interpolation,
    parse_mean,
    parse_std,
    preprocess_overrides,  # noqa: F401 - re-exported for cli.py
)
from .errors import UserError
from .isa import CpuKind, parse_cpu
from .models import ModelOptions

# The option types and parsers config composes, re-exported: `from .config import ...` keeps working.
from .options import (  # noqa: F401
    LIMITS,
    MAX_BATCH,
    AccuracyTarget,
    BenchmarkOptions,
    Precision,
    SelectionOptions,
    Target,
    check_range,
    check_top1_agreement,
    check_top1_drop,
    parse_channel_values,
    parse_choice,
    parse_enum_list,
    parse_input_size,
    parse_int_list,
    parse_word,
)

if TYPE_CHECKING:
    from .gates import Gates


class Engine(enum.StrEnum):
    """A CPU runtime that runs the ONNX models (`--engines`); TensorRT engines come with `--target tensorrt`."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"


def default_engines() -> tuple[Engine, ...]:
    """ONNX Runtime, plus OpenVINO when it can be imported here (quietly left out when not)."""
    from .engines.openvino import openvino_missing

    return (Engine.ONNXRUNTIME,) if openvino_missing() else (Engine.ONNXRUNTIME, Engine.OPENVINO)


def parse_engines(text: str | None) -> tuple[Engine, ...]:
    """'onnxruntime,openvino' -> (Engine.ONNXRUNTIME, Engine.OPENVINO); None or '' -> the default.

    An engine asked for by name that cannot run here is an error (exit 2), not a silent skip.
    """
    if text is None or not text.strip():
        return default_engines()
    engines = parse_enum_list(Engine, text, "--engines")
    if Engine.OPENVINO in engines:
        from .engines.openvino import require_openvino

        require_openvino("--engines openvino")
    return engines


class PerformanceHint(enum.StrEnum):
    """OpenVINO's performance hint: one request as fast as possible, or many requests in parallel streams."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"


class ShapeMode(enum.StrEnum):
    """How OpenVINO compiles the batch axis: one model per batch size seen (static), or one for all (dynamic)."""

    STATIC = "static"
    DYNAMIC = "dynamic"


MAX_STATIC_SHAPES = 8  # compiled batch sizes an OpenVINO runner keeps (least recently used is dropped)


@dataclass(frozen=True)
class OpenVINOOptions:
    """How OpenVINO compiles and runs the ONNX models on the CPU. None means OpenVINO's default.

    Every model is compiled with inference precision f32: OpenVINO's CPU plugin otherwise runs FP32
    layers in bfloat16 on CPUs that have it (its default there), which is not the FP32 model that was
    validated. `bf16` adds an engine that does exactly that, named `openvino-bf16`.
    """

    hint: PerformanceHint = PerformanceHint.LATENCY
    streams: int | None = None  # parallel inference streams (default: what the hint chooses)
    cache_dir: Path | None = None  # compiled models are stored here and loaded on the next start
    shapes: ShapeMode = ShapeMode.STATIC
    bf16: bool = False  # also run the FP32 model with bfloat16 inference precision (`openvino-bf16`)

    def __post_init__(self) -> None:
        if not isinstance(self.hint, PerformanceHint):
            raise UserError(f"--openvino-hint: expected one of {', '.join(h.value for h in PerformanceHint)}")
        if not isinstance(self.shapes, ShapeMode):
            raise UserError(f"--openvino-shapes: expected one of {', '.join(s.value for s in ShapeMode)}")
        if self.streams is not None and not 1 <= self.streams <= 1024:
            raise UserError(f"--openvino-streams must be between 1 and 1024, got {self.streams}")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise UserError(f"--openvino-cache-dir {self.cache_dir} is a file; give a folder (it is created if missing)")

    def as_dict(self) -> dict[str, Any]:
        return {
            "hint": self.hint.value,
            "streams": self.streams,
            "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
            "shapes": self.shapes.value,
            "bf16": self.bf16,
        }


def check_engines(engines: tuple[Engine, ...], openvino: OpenVINOOptions) -> None:
    """The CPU engines and OpenVINO's options fit together (build, validate and bench)."""
    if not engines:
        raise UserError("--engines: give at least one of onnxruntime, openvino")
    if openvino.bf16 and Engine.OPENVINO not in engines:
        raise UserError("--openvino-bf16 adds an OpenVINO engine; add openvino to --engines")


class HardwareCompat(enum.StrEnum):
    """Which GPUs a TensorRT engine must run on besides the one that built it (`--hardware-compat`)."""

    NONE = "none"  # only GPUs of the building GPU's kind (fastest)
    AMPERE_PLUS = "ampere+"  # any Ampere or newer GPU (compute capability 8.0+)
    SAME_CC = "same-cc"  # any GPU of the building GPU's compute capability

    @property
    def trt_name(self) -> str:
        """The member name of `tensorrt.HardwareCompatibilityLevel`."""
        return {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[self.value]


MAX_WORKSPACE_MIB = 1 << 20  # 1 TiB: anything larger is a typo


@dataclass(frozen=True)
class TensorRTOptions:
    """How TensorRT engines are built and run (`build --target tensorrt`). None means TensorRT's default."""

    workspace_mib: int | None = None  # limit of the builder's scratch memory pool
    builder_optimization_level: int | None = None  # 0..5; TensorRT's default is 3
    timing_cache: Path | None = None  # loaded before and saved after each build, so a rebuild is fast
    version_compatible: bool = False  # the engine also runs on later TensorRT versions (a bit slower)
    hardware_compat: HardwareCompat = HardwareCompat.NONE
    tf32: bool = False  # let FP32 layers use TF32 tensor cores (off: FP32 stays FP32)
    opt_batch_size: int | None = None  # the profile's opt batch (default: the median of --batch-sizes)
    cuda_graph: bool = False  # replay batch-1 inference from a captured CUDA graph

    def __post_init__(self) -> None:
        if self.workspace_mib is not None and not 1 <= self.workspace_mib <= MAX_WORKSPACE_MIB:
            raise UserError(f"--workspace-mib must be between 1 and {MAX_WORKSPACE_MIB}, got {self.workspace_mib}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise UserError(f"--builder-optimization-level must be 0..5 (TensorRT's default is 3), got {level}")
        if not isinstance(self.hardware_compat, HardwareCompat):
            raise UserError(f"--hardware-compat: expected one of {', '.join(h.value for h in HardwareCompat)}")
        if self.opt_batch_size is not None and self.opt_batch_size < 1:
            raise UserError(f"--opt-batch-size must be >= 1, got {self.opt_batch_size}")
        if self.timing_cache is not None:
            cache = Path(self.timing_cache)
            if cache.is_dir():
                raise UserError(f"--timing-cache {cache} is a folder; give a file path (it is created if missing)")
            if not cache.parent.is_dir():
                raise UserError(f"--timing-cache {cache}: folder {cache.parent} does not exist; create it first")

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace_mib": self.workspace_mib,
            "builder_optimization_level": self.builder_optimization_level,
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "version_compatible": self.version_compatible,
            "hardware_compat": self.hardware_compat.value,
            "tf32": self.tf32,
            "opt_batch_size": self.opt_batch_size,
            "cuda_graph": self.cuda_graph,
        }


def parse_hardware_compat(text: str, option: str = "--hardware-compat") -> HardwareCompat:
    return parse_choice(HardwareCompat, text, option)


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


def _check_providers(text: str, option: str) -> object:
    from .engines.ort import parse_providers

    return parse_providers(text, option)


# Keys of a build TOML file, the type each must have, and (for strings) the parser that checks the value.
_TOML_KEYS: dict[str, tuple[type, Any]] = {
    "arch": (str, None),
    "weights": (str, None),
    "val_data": (str, None),
    "calib_data": (str, None),
    "out": (str, None),
    "num_classes": (int, None),
    "input_size": (str, parse_input_size),
    "precision": (str, lambda text, option: parse_enum_list(Precision, text, option)),
    "target": (str, lambda text, option: parse_enum_list(Target, text, option)),
    "providers": (str, _check_providers),
    "engines": (str, lambda text, option: parse_enum_list(Engine, text, option)),
    "openvino_hint": (str, lambda text, option: parse_choice(PerformanceHint, text, option)),
    "openvino_streams": (int, None),
    "openvino_cache_dir": (str, None),
    "openvino_shapes": (str, lambda text, option: parse_choice(ShapeMode, text, option)),
    "openvino_bf16": (bool, None),
    "threads": (int, None),
    "batch_size": (int, None),
    "opset": (int, None),
    "batch_sizes": (str, parse_int_list),
    "warmup": (int, None),
    "iterations": (int, None),
    "workspace_mib": (int, None),
    "builder_optimization_level": (int, None),
    "timing_cache": (str, None),
    "hardware_compat": (str, lambda text, option: parse_hardware_compat(text, option)),
    "opt_batch_size": (int, None),
    "gates": (str, None),
    "baseline": (str, None),
    "calib_size": (int, None),
    "seed": (int, None),
    "calib_method": (str, lambda text, option: parse_method(text, option)),
    "percentile": ((int, float), check_percentile),
    "exclude_layers": (str, check_regex),
    "calib_cache": (str, None),
    "max_top1_drop": ((int, float), lambda value, option: check_top1_drop(value, option)),
    "min_top1_agreement": ((int, float), lambda value, option: check_top1_agreement(value, option)),
    "max_excluded": (int, None),
    "select_data": (str, None),
    "select_size": (int, None),
    "cpu": (str, lambda text, option: parse_cpu(text, option)),
    "ema": (bool, None),
    "mean": (str, lambda text, option: parse_mean(text, option)),
    "std": (str, lambda text, option: parse_std(text, option)),
    "crop_pct": ((int, float), lambda value, option: check_crop_pct(value, option)),
    "crop_mode": (str, lambda text, option: parse_crop_mode(text, option)),
    "interpolation": (str, lambda text, option: parse_interpolation(text, option)),
    "labels": (str, None),
}

# Keys whose values are paths (relative ones are taken relative to the TOML file's folder).
PATH_KEYS = frozenset(
    {
        "weights",
        "val_data",
        "calib_data",
        "out",
        "gates",
        "baseline",
        "timing_cache",
        "calib_cache",
        "select_data",
        "openvino_cache_dir",
        "labels",
    }
)


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
        if key not in _TOML_KEYS:
            valid = ", ".join(sorted(_TOML_KEYS))
            raise UserError(f"config file {path}: unknown key {key!r}; valid keys: {valid}")
        expected, parse = _TOML_KEYS[key]
        label = f"config file {path}: key {key!r}"
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            kind = {int: "a whole number", str: "a string", bool: "true or false"}.get(expected, "a number")
            raise UserError(f"{label} must be {kind}, got {type(value).__name__} {value!r}"[:300])
        if key in LIMITS:
            check_range(key, value, label)
        elif parse is not None:
            parse(value, label)
        elif isinstance(value, str) and (not value.strip() or "\0" in value):
            raise UserError(f"{label} must not be empty")
        if key in PATH_KEYS:
            value = os.path.abspath(Path(path).parent / value)
        options[key] = value
    return options
