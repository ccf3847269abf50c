"""TensorRT engines: a strongly typed build from an ONNX file (through polygraphy), its manifest, a runner.

Targets TensorRT 10.x and 11.x. The network is always strongly typed: TensorRT 11 knows no other kind,
and on TensorRT 10 `NetworkFromOnnxPath(strongly_typed=True)` sets `NetworkDefinitionCreationFlag.STRONGLY_TYPED`
(TensorRT 11 accepts the flag and ignores it). So the ONNX decides every tensor's precision: FP32 ONNX ->
FP32 engine (TF32 only with --tf32), FP16 ONNX (ModelOpt AutoCast) -> FP16, Q/DQ ONNX -> INT8. No
precision builder flags, no calibrator.

Only `build_engine`, the runner's `_activate` / `_infer` and `engine_layer_datatypes` need TensorRT and a GPU.
The rest is plain Python checked on the CPU: the batch profile, the polygraphy loader chain (polygraphy's
loaders are lazy and import TensorRT only when called), the manifest and its compatibility check, the CUDA
versions of torch, the driver and TensorRT (`CudaStack`). None of the TensorRT/GPU code has run on a GPU yet
(README, TensorRT).
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import functools
import importlib.metadata
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import EngineArtifact, OnnxArtifact, sidecar_path, write_sidecar
from ..errors import CheckFailed, MissingDependency, ResnetDeployError, UserError
from ..files import atomic_path, sha256_file
from ..options import MAX_BATCH, Configurable, Setting, parse_choice
from .base import Runner
from .kind import EngineKind, EngineSettings, EngineSpec, Model
from .naming import engine_name

MIN_TENSORRT_MAJOR = 10
AMPERE = (8, 0)


def engine_file_name(precision: str) -> str:
    return f"model.{precision}.engine"


# ------------------------------------------------------------------------------------------ options


class HardwareCompat(enum.StrEnum):
    """Which GPUs a TensorRT engine must run on besides the one that built it (`--hardware-compat`)."""

    NONE = "none"  # only GPUs of the building GPU's kind (fastest)
    AMPERE_PLUS = "ampere+"  # any Ampere or newer GPU (compute capability 8.0+)
    SAME_CC = "same-cc"  # any GPU of the building GPU's compute capability

    @property
    def trt_name(self) -> str:
        """The member name of `tensorrt.HardwareCompatibilityLevel`."""
        return {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[self.value]


def parse_hardware_compat(text: str, option: str = "--hardware-compat") -> HardwareCompat:
    return parse_choice(HardwareCompat, text, option)


MAX_WORKSPACE_MIB = 1 << 20  # 1 TiB: anything larger is a typo


@dataclass(frozen=True)
class TensorRTOptions(Configurable):
    """How TensorRT engines are built and run (`build --target tensorrt`). None means TensorRT's default."""

    SETTINGS = (
        Setting(
            "workspace_mib",
            int,
            "TensorRT: builder workspace limit in MiB (default: TensorRT's).",
            limits=(1, MAX_WORKSPACE_MIB),
        ),
        Setting("builder_optimization_level", int, "TensorRT: 0..5 (default 3; higher builds longer).", limits=(0, 5)),
        Setting("timing_cache", Path, "TensorRT: timing cache file, read and updated."),
        Setting("version_compatible", bool, "TensorRT: engines also run on later TensorRT versions.", toml=False),
        Setting(
            "hardware_compat",
            str,
            "TensorRT: none, ampere+ or same-cc.",
            "none",
            parse=parse_hardware_compat,
        ),
        Setting("tf32", bool, "TensorRT: let FP32 layers use TF32 tensor cores.", toml=False),
        Setting(
            "opt_batch_size",
            int,
            "TensorRT: batch size to tune for (default: median of --batch-sizes).",
            limits=(1, MAX_BATCH),
        ),
        Setting("cuda_graph", bool, "TensorRT: run batch 1 from a captured CUDA graph.", toml=False),
    )

    workspace_mib: int | None = None  # limit of the builder's scratch memory pool
    builder_optimization_level: int | None = None  # 0..5; TensorRT's default is 3
    timing_cache: Path | None = None  # loaded before and saved after each build, so a rebuild is fast
    version_compatible: bool = False  # the engine also runs on later TensorRT versions (a bit slower)
    hardware_compat: HardwareCompat = HardwareCompat.NONE
    tf32: bool = False  # let FP32 layers use TF32 tensor cores (off: FP32 stays FP32)
    opt_batch_size: int | None = None  # the profile's opt batch (default: the median of --batch-sizes)
    cuda_graph: bool = False  # replay batch-1 inference from a captured CUDA graph

    def __post_init__(self) -> None:
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:  # the flag's range, saying TensorRT's default
            raise UserError(f"--builder-optimization-level must be 0..5 (TensorRT's default is 3), got {level}")
        self.check_ranges()
        if not isinstance(self.hardware_compat, HardwareCompat):
            raise UserError(f"--hardware-compat: expected one of {', '.join(h.value for h in HardwareCompat)}")
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


# ------------------------------------------------------------------------------------- availability


def missing_requirements() -> list[str]:
    """What this machine lacks for building and running TensorRT engines (empty when nothing)."""
    missing = []
    try:
        import tensorrt

        version = str(tensorrt.__version__)
        if version_tuple(version)[:1] < (MIN_TENSORRT_MAJOR,):
            missing.append(f"TensorRT {MIN_TENSORRT_MAJOR} or newer (found {version})")
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when the bindings lack their libraries
        missing.append(f"TensorRT (no importable `tensorrt` module: {type(exc).__name__}; pip install 'resnet-deploy[tensorrt]')")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken CUDA setup means no usable GPU
        has_gpu = False
    if not has_gpu:
        # a driver too old for torch's CUDA also leaves CUDA without a device: name that cause instead
        missing.append(CudaStack.current().driver_too_old() or "an NVIDIA GPU (CUDA sees no device)")
    return missing


def missing_message(missing: list[str]) -> str:
    return f"TensorRT engines need TensorRT and an NVIDIA GPU; missing here: {'; '.join(missing)}"


def require_tensorrt() -> None:
    missing = missing_requirements()
    if missing:
        raise MissingDependency(missing_message(missing))


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.13.3.9' -> (10, 13, 3, 9); trailing non-numeric parts (rc, post) are ignored."""
    parts = []
    for part in str(version).split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


# ----------------------------------------------------------------------------- machine and manifest


@dataclass(frozen=True)
class TrtEnvironment:
    """The TensorRT version and GPU an engine is built or run with."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.6"
    driver: str | None

    @classmethod
    def current(cls) -> "TrtEnvironment":
        import tensorrt
        import torch

        device = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(device)
        return cls(str(tensorrt.__version__), torch.cuda.get_device_name(device), f"{major}.{minor}", _driver_version())

    def gpu(self) -> dict[str, Any]:
        return {"name": self.gpu_name, "compute_capability": self.compute_capability, "driver": self.driver}


def _driver_version() -> str | None:
    """The NVIDIA driver version (NVML, from nvidia-ml-py), or None when it cannot be read."""
    return _nvml_driver()[0]


def _nvml_driver() -> tuple[str | None, str | None]:
    """(driver version "580.65.06", newest CUDA it supports "13.0") from NVML (nvidia-ml-py); None when unreadable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12080 for CUDA 12.8
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library, no driver, or no nvidia-ml-py: informative only
        return None, None
    return (version.decode() if isinstance(version, bytes) else str(version)), f"{cuda // 1000}.{cuda % 1000 // 10}"


def cuda_majors_of_tensorrt(distributions: Iterable[str]) -> set[int]:
    """The CUDA majors of the installed TensorRT wheels, from their names (tensorrt-cu12, tensorrt_cu13_libs, ...)."""
    found = (re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", name.lower()) for name in distributions)
    return {int(match.group(1)) for match in found if match}


@dataclass(frozen=True)
class CudaStack:
    """The CUDA versions a TensorRT run depends on, read without needing any of them to work (the preflight)."""

    torch: str
    torch_cuda: str | None  # torch.version.cuda: the CUDA torch is built for ("13.0"; None for a CPU build)
    driver: str | None  # NVIDIA driver version (NVML)
    driver_cuda: str | None  # the newest CUDA that driver runs ("13.0"; NVML)
    tensorrt: str | None  # tensorrt.__version__, None when it cannot be imported
    tensorrt_cuda: tuple[int, ...]  # CUDA majors of the installed TensorRT wheels (tensorrt-cu12 / tensorrt-cu13)
    polygraphy: str | None

    @classmethod
    def current(cls) -> "CudaStack":
        import torch

        try:
            import tensorrt

            trt_version: str | None = str(tensorrt.__version__)
        except Exception:  # noqa: BLE001 - missing, or bindings without their libraries
            trt_version = None
        try:
            polygraphy: str | None = importlib.metadata.version("polygraphy")
        except importlib.metadata.PackageNotFoundError:
            polygraphy = None
        names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
        driver, driver_cuda = _nvml_driver()
        return cls(
            torch.__version__, torch.version.cuda, driver, driver_cuda, trt_version,
            tuple(sorted(cuda_majors_of_tensorrt(names))), polygraphy,
        )  # fmt: skip

    def driver_too_old(self) -> str | None:
        """One line when the driver cannot run torch's CUDA (then CUDA sees no device), else None."""
        if not (self.torch_cuda and self.driver_cuda):
            return None
        if _major(self.driver_cuda) >= _major(self.torch_cuda):
            return None
        return (
            f"an NVIDIA driver for CUDA {_major(self.torch_cuda)} (torch {self.torch} is built for CUDA {self.torch_cuda}; "
            f"driver {self.driver} runs CUDA up to {self.driver_cuda}): update the driver (CUDA 13 needs 580 or newer), "
            "or use a CUDA-12 torch with the tensorrt-cu12 extra (README, TensorRT)"
        )

    def mismatch(self) -> str | None:
        """One line naming CUDA majors that do not match (driver vs torch, TensorRT wheels vs torch), else None."""
        too_old = self.driver_too_old()
        if too_old:
            return f"CUDA mismatch: this needs {too_old}"
        if self.torch_cuda and self.tensorrt_cuda and self.tensorrt_cuda != (_major(self.torch_cuda),):
            wheels = ", ".join(f"tensorrt-cu{m}" for m in self.tensorrt_cuda)
            return (
                f"CUDA mismatch: torch {self.torch} is built for CUDA {self.torch_cuda} but the TensorRT wheels are {wheels}; "
                f"install the tensorrt-cu{_major(self.torch_cuda)} package (pip install 'resnet-deploy[tensorrt]' for CUDA 13, "
                "'resnet-deploy[tensorrt-cu12]' with a CUDA-12 torch)"
            )
        return None

    def describe(self) -> str:
        wheels = ", ".join(f"cu{m}" for m in self.tensorrt_cuda) or "no TensorRT wheels"
        return (
            f"torch {self.torch} (CUDA {self.torch_cuda or 'none: CPU build'}), NVIDIA driver {self.driver or 'not found'} "
            f"(CUDA up to {self.driver_cuda or '?'}), TensorRT {self.tensorrt or 'not importable'} ({wheels}), "
            f"polygraphy {self.polygraphy or 'not installed'}"
        )


def _major(version: str) -> int:
    return version_tuple(version)[0]


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return (int(major), int(minor or 0))


def check_compatible(engine: EngineArtifact, here: TrtEnvironment) -> list[str]:
    """Refuse, before deserializing, an engine that this TensorRT and GPU cannot run (UserError naming both).

    Rules (TensorRT's): a plain engine runs only on the TensorRT version that built it; a version-compatible
    one on that version or newer. Hardware: `none` and `same-cc` need the same compute capability, `ampere+`
    any GPU of compute capability 8.0 or newer. Returns warnings for engines that run, but maybe slower.
    """
    built_gpu = engine.gpu
    version_compatible = bool(engine.build.get("version_compatible"))
    try:
        level = HardwareCompat(engine.build.get("hardware_compat", HardwareCompat.NONE.value))
    except ValueError:
        raise UserError(f"{sidecar_path(engine.path)}: unknown hardware_compat; rebuild the engine") from None
    problem = None
    if version_compatible and version_tuple(here.tensorrt_version) < version_tuple(engine.tensorrt_version):
        problem = "a version-compatible engine needs the TensorRT that built it or a newer one"
    elif not version_compatible and here.tensorrt_version != engine.tensorrt_version:
        problem = "an engine runs only on the TensorRT version that built it (unless built with --version-compatible)"
    elif level is HardwareCompat.AMPERE_PLUS and _capability(here.compute_capability) < AMPERE:
        problem = "an engine built with --hardware-compat ampere+ needs a GPU of compute capability 8.0 or newer"
    elif level is not HardwareCompat.AMPERE_PLUS and here.compute_capability != built_gpu["compute_capability"]:
        problem = f"an engine built with --hardware-compat {level} runs only on GPUs of the compute capability it was built on"
    if problem:
        raise UserError(
            f"{engine.path.name} was built with TensorRT {engine.tensorrt_version} on {built_gpu['name']} "
            f"(compute capability {built_gpu['compute_capability']}); this machine has TensorRT {here.tensorrt_version} "
            f"on {here.gpu_name} (compute capability {here.compute_capability}): {problem}; rebuild it here "
            "(resnet-deploy build --target tensorrt)"
        )
    if level is HardwareCompat.NONE and built_gpu["name"] != here.gpu_name:
        return [
            f"{engine.path.name} was built on {built_gpu['name']} and runs on {here.gpu_name} (same compute capability): "
            "TensorRT may have picked kernels that are slower here; rebuild it here for the best speed"
        ]
    return []


# ---------------------------------------------------------------------------------------- the build


@dataclass(frozen=True)
class BatchProfile:
    """The engine's one optimization profile over the batch axis: TensorRT tunes its kernels for `opt`."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise UserError(f"TensorRT profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def from_batch_sizes(cls, batch_sizes: tuple[int, ...], opt: int | None = None) -> "BatchProfile":
        """min = smallest, max = largest of the benchmarked batch sizes; opt = `opt` or their median.

        For an even count the upper median is taken (1,8 -> 8; 1,8,64,128 -> 64): the larger sizes are
        the ones where kernel choice matters most for throughput. Pass --opt-batch-size to choose.
        """
        sizes = sorted(set(batch_sizes))
        if not sizes or sizes[0] < 1:
            raise UserError("--batch-sizes must list whole numbers >= 1")
        low, high = sizes[0], sizes[-1]
        if opt is None:
            opt = sizes[len(sizes) // 2]
        elif not low <= opt <= high:
            raise UserError(f"--opt-batch-size {opt} is outside {low}..{high} (the range of --batch-sizes); choose a size in it")
        return cls(low, opt, high)

    def shapes(self, chw: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return ((self.min, *chw), (self.opt, *chw), (self.max, *chw))

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class EngineBuildChain:
    """The polygraphy loaders of one engine build; calling `save` builds the serialized engine and writes it.

    The engine is built as bytes (`EngineBytesFromNetwork`) and written as they are (`SaveBytes`), never
    deserialized and serialized again: since TensorRT 8.6 a version-compatible engine cannot be re-serialized
    after deserialization (polygraphy's TrtSaveEngineBytesArgs), and the build needs no runtime at all.
    """

    network: Any  # NetworkFromOnnxPath(strongly_typed=True)
    config: Any  # CreateConfig: profile, TF32, timing cache, optimization level, version compatibility
    builder_config: Any  # PostprocessConfig over `config`: workspace limit and hardware compatibility
    engine_bytes: Any  # EngineBytesFromNetwork: builds the serialized engine, saves the timing cache
    save: Any  # SaveBytes (polygraphy.backend.common): writes the serialized engine to the file


def engine_build_chain(
    onnx_path: Path,
    engine_path: Path,
    input_name: str,
    chw: tuple[int, int, int],
    options: TensorRTOptions,
    profile: BatchProfile,
) -> EngineBuildChain:
    """polygraphy's loaders for a strongly typed build of `onnx_path` into `engine_path`; nothing runs yet."""
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig, Profile

    low, opt, high = profile.shapes(chw)
    cache = None if options.timing_cache is None else str(options.timing_cache)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    with quiet_polygraphy():  # CreateConfig logs a note about TF32 when it is made
        config = CreateConfig(
            tf32=options.tf32,
            profiles=[Profile().add(input_name, min=low, opt=opt, max=high)],
            load_timing_cache=cache,
            builder_optimization_level=options.builder_optimization_level,
            version_compatible=options.version_compatible,
        )
    # polygraphy takes the workspace limit and the hardware compatibility level as TensorRT enum values,
    # which would import TensorRT right here; set them when the config is made instead, so this chain
    # can be constructed (and checked) on machines without TensorRT.
    builder_config = PostprocessConfig(config, func=functools.partial(_set_enum_options, options))
    engine_bytes = EngineBytesFromNetwork(network, config=builder_config, save_timing_cache=cache)
    return EngineBuildChain(network, config, builder_config, engine_bytes, SaveBytes(engine_bytes, path=str(engine_path)))


def _set_enum_options(options: TensorRTOptions, builder: Any, network: Any, config: Any) -> None:
    import tensorrt as trt

    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.hardware_compat is not HardwareCompat.NONE:
        level = getattr(trt.HardwareCompatibilityLevel, options.hardware_compat.trt_name, None)
        if level is None:
            raise MissingDependency(
                f"--hardware-compat {options.hardware_compat} needs a newer TensorRT (this {trt.__version__} lacks "
                f"HardwareCompatibilityLevel.{options.hardware_compat.trt_name})"
            )
        config.hardware_compatibility_level = level


def quiet_polygraphy() -> contextlib.AbstractContextManager:
    """Only errors from polygraphy (and TensorRT's log, which it relays) reach the terminal."""
    from polygraphy.logger import G_LOGGER

    return G_LOGGER.verbosity(G_LOGGER.ERROR)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def run_build_chain(chain: EngineBuildChain, source_name: str) -> None:
    """Build and write the engine of `chain`; any failure of polygraphy or TensorRT becomes one CheckFailed line.

    polygraphy reports its own errors as PolygraphyException, TensorRT's bindings raise RuntimeError or
    TypeError, writing can raise OSError: none of them reaches the user as a traceback. The tool's own
    errors (a MissingDependency from the builder config) pass through as they are.
    """
    try:
        with quiet_polygraphy():
            chain.save()
    except ResnetDeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above: every other failure is the build's
        raise CheckFailed(f"TensorRT could not build an engine from {source_name}: {_first_line(exc)}") from None


def build_engine(model: OnnxArtifact, path: Path, options: TensorRTOptions, profile: BatchProfile) -> EngineArtifact:
    """Build a strongly typed engine from `model` into `path` (atomically), with its manifest beside it."""
    import polygraphy

    require_tensorrt()
    here = TrtEnvironment.current()
    path = Path(path)
    chw = tuple(int(d) for d in model.preprocess["input_size"])
    started = time.perf_counter()
    with atomic_path(path) as tmp:
        run_build_chain(engine_build_chain(model.path, tmp, model.input_name, chw, options, profile), model.path.name)
        digest = sha256_file(tmp)
    artifact = EngineArtifact(
        path=path,
        arch=model.arch,
        num_classes=model.num_classes,
        preprocess=model.preprocess,
        precision=model.precision,
        target=model.target,
        input_name=model.input_name,
        output_name=model.output_name,
        tensorrt_version=here.tensorrt_version,
        gpu=here.gpu(),
        build={"strongly_typed": True, **options.as_dict(), "polygraphy": polygraphy.__version__},
        profile=profile.as_dict(),
        source_onnx=model.path.name,
        source_onnx_sha256=sha256_file(model.path),
        build_seconds=round(time.perf_counter() - started, 3),
        built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        class_names=model.class_names,
        origin=model.origin,
    )
    write_sidecar(path, artifact.metadata(), digest)
    return artifact


# ---------------------------------------------------------------------------------------- the runner


@dataclass
class _Slot:
    """One batch size on one execution context, allocated once: pinned host and device input/output (and a CUDA graph)."""

    context: Any
    host_in: Any
    device_in: Any
    device_out: Any
    host_out: Any
    graph: Any = None


class TensorRTRunner(Runner):
    """Runs a serialized engine: pinned host buffers, device buffers per batch size, one CUDA stream.

    `device_ms()` is the GPU compute time of the last call (CUDA events around the engine's execution);
    the benchmark's own timing of `infer` is the end-to-end time with both host copies. With
    `cuda_graph`, batch 1 runs on an execution context of its own, bound once to batch 1 and its buffers,
    captured once into a CUDA graph (thread-local capture mode, as trtexec captures) and replayed: a
    captured graph fixes the shapes, the tensor addresses and the context's state, so the context that
    serves the other batch sizes (and is rebound between them) is never the graph's. A capture that fails
    leaves batch 1 running plainly on its own context (`describe()["cuda_graph"]` says why).

    polygraphy's TrtRunner is not used for this timed path: it synchronizes inside every call and
    allocates outputs through an allocator, so its work can neither be captured in a CUDA graph nor
    timed apart from host work. It is the independent reference in the GPU tests.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: Path, name: str | None = None, cuda_graph: bool = False) -> None:
        self.engine_path = Path(engine_path)
        self.artifact = EngineArtifact.read(self.engine_path)  # manifest + sha256; needs no TensorRT
        a = self.artifact
        super().__init__(name or engine_name(self.backend, a.precision, a.target), a.precision, a.target)
        self.cuda_graph = cuda_graph
        self.chw = tuple(int(d) for d in a.preprocess["input_size"])
        self.warnings: list[str] = []
        self.graph_error: str | None = None
        self._device_ms: float | None = None

    # -- lifecycle

    def _activate(self) -> None:
        require_tensorrt()
        self.warnings = check_compatible(self.artifact, TrtEnvironment.current())
        import tensorrt as trt
        import torch
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import util as trt_util
        from polygraphy.exception import PolygraphyException

        self._runtime = trt.Runtime(trt_util.get_trt_logger())
        try:
            with quiet_polygraphy():  # EngineFromBytes also allows the host code of version-compatible engines
                engine = EngineFromBytes(self.engine_path.read_bytes(), runtime=self._runtime)()
        except PolygraphyException as exc:
            raise CheckFailed(f"TensorRT could not load {self.engine_path.name}: {_first_line(exc)}") from None
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        a = self.artifact
        if not {a.input_name, a.output_name} <= names:
            raise CheckFailed(f"{self.engine_path.name} has tensors {sorted(names)}, not {a.input_name}/{a.output_name}")
        self._engine = engine
        self._context = self._new_context()
        self._in_dtype = _torch_dtype(engine.get_tensor_dtype(a.input_name))
        self._out_dtype = _torch_dtype(engine.get_tensor_dtype(a.output_name))
        self._stream = torch.cuda.Stream()
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._slots: dict[int, _Slot] = {}  # on self._context, rebound when the batch size changes
        self._bound: int | None = None  # the batch size self._context is bound to
        self._graph_slot: _Slot | None = None  # batch 1 on its own context, with --cuda-graph

    def _new_context(self) -> Any:
        context = self._engine.create_execution_context()
        if context is None:
            raise CheckFailed(f"TensorRT could not create an execution context for {self.engine_path.name} (GPU memory?)")
        return context

    def _deactivate(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.synchronize()
        names = ("_graph_slot", "_slots", "_context", "_engine", "_runtime", "_stream", "_start", "_end")
        for name in names:  # graphs and buffers before their contexts, the contexts before the engine
            if hasattr(self, name):
                delattr(self, name)

    # -- inference

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Batches outside the profile are run in chunks of at most `max`, a short one padded up to `min`."""
        low, high = self.artifact.profile["min"], self.artifact.profile["max"]
        outputs, device_ms = [], 0.0
        for start in range(0, len(batch), high):
            chunk = batch[start : start + high]
            padded = chunk if len(chunk) >= low else np.concatenate([chunk, np.repeat(chunk[-1:], low - len(chunk), 0)])
            outputs.append(self._run(padded)[: len(chunk)])
            device_ms += self._device_ms or 0.0
        self._device_ms = device_ms
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        slot = self._slot_for(len(batch))
        slot.host_in.copy_(torch.from_numpy(batch))  # into pinned memory (casting if the engine's input is not FP32)
        with torch.cuda.stream(self._stream):
            slot.device_in.copy_(slot.host_in, non_blocking=True)
            self._start.record(self._stream)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._execute(slot.context)
            self._end.record(self._stream)
            slot.host_out.copy_(slot.device_out, non_blocking=True)
        self._stream.synchronize()
        self._device_ms = self._start.elapsed_time(self._end)
        return slot.host_out.float().numpy().copy()

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise CheckFailed(f"TensorRT failed to run {self.engine_path.name} (execute_async_v3 returned False)")

    def _slot_for(self, n: int) -> _Slot:
        if n == 1 and self.cuda_graph:
            if self._graph_slot is None:
                self._graph_slot = self._graph_batch_1()
            return self._graph_slot
        slot = self._slots.get(n)
        if slot is None:
            slot = self._slots[n] = self._allocate(self._context, n)
        elif self._bound != n:
            self._bind(slot, n)
        self._bound = n
        return slot

    def _allocate(self, context: Any, n: int) -> _Slot:
        import torch

        a = self.artifact
        shape = (n, *self.chw)
        if not context.set_input_shape(a.input_name, shape):
            raise CheckFailed(f"{self.engine_path.name} refused input shape {shape} (profile {a.profile})")
        out_shape = tuple(context.get_tensor_shape(a.output_name))
        slot = _Slot(
            context=context,
            host_in=torch.empty(shape, dtype=self._in_dtype, pin_memory=True),
            device_in=torch.empty(shape, dtype=self._in_dtype, device="cuda"),
            device_out=torch.empty(out_shape, dtype=self._out_dtype, device="cuda"),
            host_out=torch.empty(out_shape, dtype=self._out_dtype, pin_memory=True),
        )
        self._bind(slot, n)
        return slot

    def _bind(self, slot: _Slot, n: int) -> None:
        a = self.artifact
        ok = slot.context.set_input_shape(a.input_name, (n, *self.chw))
        ok = ok and slot.context.set_tensor_address(a.input_name, slot.device_in.data_ptr())
        ok = ok and slot.context.set_tensor_address(a.output_name, slot.device_out.data_ptr())
        if not ok:
            raise CheckFailed(f"TensorRT refused the buffers for batch {n} of {self.engine_path.name}")

    def _graph_batch_1(self) -> _Slot:
        """Batch 1 on a context of its own, bound once, run once plainly, then captured (or left plain)."""
        slot = self._allocate(self._new_context(), 1)
        self._run_plain(slot)  # TensorRT finishes its shape-dependent setup outside the capture
        slot.graph = self._capture(slot)
        return slot

    def _run_plain(self, slot: _Slot) -> None:
        import torch

        with torch.cuda.stream(self._stream):
            self._execute(slot.context)
        self._stream.synchronize()

    def _capture(self, slot: _Slot) -> Any:
        """The slot's execution as a CUDA graph, or None (the reason in `graph_error`)."""
        import torch

        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                self._execute(slot.context)
        except (RuntimeError, CheckFailed) as exc:  # CUDA refused the capture, or TensorRT's enqueue failed in it
            self.graph_error = _first_line(exc)
            self._run_plain(slot)  # as after any failed capture: the context must still run plainly, or fail here
            return None
        return graph

    def device_ms(self) -> float | None:
        return self._device_ms

    def synchronize(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.synchronize()

    def describe(self) -> dict[str, object]:
        a = self.artifact
        graph: object = False
        if self.cuda_graph:
            graph = f"not captured: {self.graph_error}" if self.graph_error else "batch 1"
        return {
            "tensorrt": a.tensorrt_version,
            "gpu": a.gpu,
            "path": str(self.engine_path),
            "profile": a.profile,
            "build": a.build,
            "cuda_graph": graph,
            "warnings": list(self.warnings),
        }


# What a layer's tensors compute in, from the engine inspector's JSON: TensorRT 10 writes one "Format/Datatype"
# text per tensor ("Channel major FP16 format where ..."), TensorRT 11 a "Datatype" of its own. The first
# name found in the text wins, so the longer names come before the names they contain.
_DATATYPE_NAMES = (
    ("BFLOAT16", "bf16"), ("FLOAT8", "fp8"), ("FP8", "fp8"), ("HALF", "fp16"), ("FP16", "fp16"),
    ("UINT8", "uint8"), ("INT8", "int8"), ("FLOAT", "fp32"), ("FP32", "fp32"), ("INT32", "int32"), ("INT64", "int64"),
)  # fmt: skip


def tensor_datatype(tensor: dict[str, Any]) -> str | None:
    """The data type of one tensor of the engine inspector's layer JSON (TensorRT 10 or 11 layout), or None."""
    text = str(tensor.get("Datatype") or tensor.get("Format/Datatype") or "").upper()
    return next((name for key, name in _DATATYPE_NAMES if key in text), None)


def count_layer_datatypes(layers: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many layers write each data type (their first output's), e.g. {"int8": 21, "fp32": 3}."""
    counts: Counter[str] = Counter()
    for layer in layers:
        outputs = layer.get("Outputs") or []
        datatype = tensor_datatype(outputs[0]) if outputs else None
        counts[datatype or "other"] += 1
    return dict(counts)


def engine_layer_datatypes(engine_path: Path) -> dict[str, int]:
    """The data types the layers of a built engine write, read with TensorRT's engine inspector (needs a GPU).

    polygraphy's CreateConfig builds with ProfilingVerbosity.DETAILED, so the inspector sees each layer's tensors.
    """
    import json

    import tensorrt as trt
    from polygraphy.backend.trt import EngineFromBytes

    with quiet_polygraphy():
        engine = EngineFromBytes(Path(engine_path).read_bytes())()
    inspector = engine.create_engine_inspector()
    layers = (json.loads(inspector.get_layer_information(i, trt.LayerInformationFormat.JSON)) for i in range(engine.num_layers))
    return count_layer_datatypes(layers)


def _torch_dtype(trt_dtype: Any) -> Any:
    """A TensorRT data type as a torch dtype, through polygraphy's type table."""
    from polygraphy.datatype import DataType

    return DataType.to_dtype(DataType.from_dtype(trt_dtype, source_module="tensorrt"), "torch")


class TensorRTKind(EngineKind):
    """A TensorRT engine built from each model made for TensorRT: those without a target (FP32, FP16) and the
    tensorrt-target INT8; a model quantized for another target is not TensorRT's. Its file is `model.<precision>.engine`
    (`.best-effort.engine` for a mixed-precision model that missed its target), tuned for the timed batch sizes."""

    name = "tensorrt"
    title = "TensorRT"
    options_type = TensorRTOptions

    def available(self) -> str | None:
        missing = missing_requirements()
        return missing_message(missing) if missing else None

    def _plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]:
        if model.target not in (None, self.native_target):
            return []
        file = engine_file_name(model.precision)
        if ".best-effort." in Path(model.path).name:  # a mixed-precision search missed its target: say so here too
            file = file.replace(".engine", ".best-effort.engine")
        profile = BatchProfile.from_batch_sizes(tuple(settings.batch_sizes), settings.opt_batch)
        folder = settings.folder or Path(model.path).parent
        return [self.spec(model, settings, file=folder / file, profile=(profile.min, profile.opt, profile.max))]

    def build(self, spec: EngineSpec, folder: Path) -> dict[str, Any]:
        if not isinstance(spec.model, OnnxArtifact):
            raise RuntimeError(f"engine {spec.name}: TensorRT builds from an ONNX file with its sidecar (an OnnxArtifact)")
        return build_engine(spec.model, Path(folder) / spec.file.name, spec.options, BatchProfile(*spec.profile)).metadata()

    def built(self, path: Path, settings: EngineSettings) -> EngineSpec:
        return self.spec(EngineArtifact.read(Path(path)), settings)

    def _runner(self, spec: EngineSpec) -> TensorRTRunner:
        return TensorRTRunner(spec.file, name=spec.name, cuda_graph=spec.options.cuda_graph)
